"""`python -m kairos.executor`: runs the executor alone (same as `kairos serve executor`), on uvloop.

Everything imported at start-up is frozen out of the garbage collector's generations, so the collections
that the many short-lived objects of each run trigger do not walk those modules' objects again and again.
"""

import asyncio
import gc

import uvloop

from kairos.cli import main
from kairos.executor import app  # noqa: F401  (imported before the freeze)

asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
gc.collect()
gc.freeze()
main(["serve", "executor"])
