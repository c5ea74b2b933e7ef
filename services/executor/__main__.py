"""`python -m kairos.executor`: runs the executor alone (same as `kairos serve executor`)."""

from kairos.cli import main

main(["serve", "executor"])
