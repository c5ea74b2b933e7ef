"""Start-up failures an operator can fix, which the `kairos` command reports in one line instead of a traceback."""

from __future__ import annotations


class StartupError(Exception):
    """A service could not start for a reason outside the code; the message says what and where, and never holds
    a secret."""


class DatabaseUnavailableError(StartupError):
    """KAIROS_DATABASE_URL's database could not be reached; the message names it without its password."""


class ListenError(StartupError):
    """A server could not listen on its configured address (in use, not allowed, not an address of this host)."""
