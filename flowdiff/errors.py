"""The exceptions flowdiff raises.

    FlowdiffError                 every error the CLI turns into one line and exit status 2
     +-- ConfigError              bad or unknown key in the config (names the key)
     +-- CaptureError             a capture file that cannot be read at all (names file and offset)
     +-- StoreError               the Parquet store is missing, unreadable or locked
     +-- BaselineError            no baseline, or a baseline for another table definition
     |    +-- LearnRefused        learn would empty or halve a baseline (nothing written; --force)
     +-- RulesError               a rules file entry that cannot be parsed
     |    +-- TooBroadError         a triage rule or change that would match every row of a table
     +-- BadValueError            a --where / accept value that does not fit its field
     +-- ReportError              a report id that does not exist, a template that fails
     +-- MailError                SMTP settings or delivery problems
     +-- LockError                another flowdiff run holds the lock
     +-- ClusterError             the Dask scheduler cannot be reached, or the cluster failed a job

A malformed *packet* is never an exception: it is counted under a skip reason. A damaged *file* after
some good records is reported as a warning (`CaptureDamage`) and the good records are kept.
"""

from __future__ import annotations


class FlowdiffError(Exception):
    """Base class; ``str(err)`` is the one line the CLI prints after ``Error:``."""


class ConfigError(FlowdiffError):
    """A config file that cannot be read, an unknown key or a bad value (names the key)."""

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None):
        self.key = key
        self.path = path
        where = f"{path}: " if path else ""
        what = f"{key}: " if key else ""
        super().__init__(f"config {where}{what}{message}")


class CaptureError(FlowdiffError):
    """A capture that cannot be read at all (names the file and the byte offset)."""

    def __init__(self, path: str, message: str, *, offset: int | None = None):
        self.path = path
        self.offset = offset
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}{at}: {message}")


class StoreError(FlowdiffError):
    """The store is missing, unreadable, locked or holds another definition of a table."""


class BaselineError(FlowdiffError):
    """No baseline yet, an unknown version, or a baseline learned for another table definition."""


class LearnRefused(BaselineError):
    """learn refused, nothing written: a window without data (``empty``: table -> why), or a new version
    that would hold no key of a table or drop more than half of its keys (``changes``: table ->
    (keys now, keys after)); the latter is allowed with ``force``."""

    def __init__(
        self,
        message: str,
        *,
        empty: dict[str, str] | None = None,
        changes: dict[str, tuple[int, int]] | None = None,
    ):
        self.empty = dict(empty or {})
        self.changes = dict(changes or {})
        super().__init__(message)


class RulesError(FlowdiffError):
    """A rules file or rule that cannot be parsed (names the file and the entry)."""


class TooBroadError(RulesError):
    """A triage command that would write a rule (or a baseline change) matching every possible row of a
    table: an allow rule would mute the table forever. Refused, saying what it would mute."""

    def __init__(self, kind: str, table: str, fields: str, hint: str = ""):
        self.kind = kind  # "allow" / "deny" / "accept"
        self.table = table
        self.fields = fields  # "src=*"
        verb = {"allow": "allow", "deny": "deny", "accept": "accept"}.get(kind, kind)
        hint = hint or (
            "refused: name the rows more narrowly (a CIDR, a port, a label that is not everything)"
            if kind != "allow"
            else "refused: it would mute the table; accept the rows instead, or give a narrower --where"
        )
        what = "change" if kind == "accept" else "rule"
        super().__init__(f"this {what} would {verb} every row of table {table} ({fields}): {hint}")


class BadValueError(FlowdiffError):
    """A value that does not fit its key field (``--where server=300.1.1.1``): names it in one line."""

    def __init__(self, where: str, field: str, value: object, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{where}: {reason}")


class ReportError(FlowdiffError):
    """A report id that does not exist, or a template that fails to render."""


class MailError(FlowdiffError):
    """Mail settings that cannot work, or a delivery the server refused."""


class LockError(FlowdiffError):
    """Another flowdiff process holds the lock of the store or of a run."""


class MailRefusedError(MailError):
    """The server refused this message for good (SMTP 5xx to MAIL FROM, RCPT TO or DATA): retrying the
    same bytes cannot help, so the outbox moves it to its failed folder instead of retrying forever."""

    def __init__(self, message: str, *, code: int):
        super().__init__(message)
        self.code = code


class ClusterError(FlowdiffError):
    """The Dask scheduler cannot be reached, or the cluster lost a job (nothing was written)."""

    def __init__(self, message: str, *, address: str = ""):
        super().__init__(message)
        self.address = address
