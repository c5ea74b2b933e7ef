"""`python -m kairos.registry`: runs the registry alone (same as `kairos serve registry`)."""

from kairos.cli import main

main(["serve", "registry"])
