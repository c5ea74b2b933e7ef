"""`python -m kairos.registry`: runs the registry alone (same as `kairos serve registry`), on uvloop."""

import asyncio

import uvloop

from kairos.cli import main

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
main(["serve", "registry"])
