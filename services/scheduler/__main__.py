"""`python -m kairos.scheduler`: runs the scheduler alone (same as `kairos serve scheduler`)."""

from kairos.cli import main

main(["serve", "scheduler"])
