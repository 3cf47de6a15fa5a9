"""Exit codes, declared once. Result objects compute theirs (``.exit_code``); the CLI only returns it.

A crash must never read as a finding: ``diff --exit-code`` and ``run --exit-code`` use 1 for "new rows",
so an unexpected exception (a bug) has a code of its own, 70 (``EX_SOFTWARE`` of sysexits.h).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done; nothing new, or new rows reported without --exit-code
    NEW_ROWS = 1  # new rows found, with --exit-code (like `git diff --exit-code`); status: a problem is open
    ERROR = 2  # bad input, config, store, lock or refused command: one `Error:` line on stderr
    DEFERRED = 3  # a message waits in the outbox (mail server down); it is retried by the next run
    INTERNAL = 70  # a bug: an unexpected exception, with its traceback on stderr
