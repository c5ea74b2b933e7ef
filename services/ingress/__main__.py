"""`python -m kairos.ingress`: runs the ingress alone (same as `kairos serve ingress`)."""

from kairos.cli import main

main(["serve", "ingress"])
