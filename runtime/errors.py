"""The runtime's one user-error type and the exit codes of the executable (and of build.py).

Library code raises a `UserError` subclass for anything the person at the station can fix (a damaged
bundle, a wrong option, a question that does not fit); `runtime.cli.main` catches it once and prints
one `error:` line. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1  # an unexpected exception: Python's own exit status for an uncaught traceback
EXIT_USER_ERROR = 2  # bad arguments or input: one `error:` line (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UserError(Exception):
    """A mistake the user can fix; the message names the file or option and the problem."""
