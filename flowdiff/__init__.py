"""flowdiff: NNstat-style flow statistics differ.

The library API, the same functions the CLI calls (every one takes explicit arguments; the config is a
:class:`Config`, from :func:`load_config` or :func:`parse_config`)::

    import flowdiff
    config = flowdiff.load_config()                    # ./flowdiff.toml, $FLOWDIFF_CONFIG or defaults
    flowdiff.collect(["/var/spool/flowdiff"], config)   # captures -> count tables
    store = flowdiff.open_store(config.store)
    store.tables(); store.read("services", since="2026-11-30", where={"service_port": 25})
    flowdiff.learn(config)                             # freeze the baseline
    result = flowdiff.diff(config)                     # DiffResult: .rows per table, .report_id
    flowdiff.baseline_rows(config, "services")         # {table: DataFrame} of the current baseline
    flowdiff.load_rules(config); flowdiff.list_reports(config); flowdiff.load_report(config, rid)
    await flowdiff.send_async(message, config.mail)    # inside Jupyter's running event loop

Every reader returns a DataFrame with the full schema, empty when there is nothing, never ``None``.
Names are imported lazily so that ``import flowdiff`` (and the CLI) start fast.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, str]] = {
    # config
    "Config": ("flowdiff.config", "Config"),
    "TableConfig": ("flowdiff.config", "TableConfig"),
    "MailConfig": ("flowdiff.config", "MailConfig"),
    "load_config": ("flowdiff.config", "load_config"),
    "parse_config": ("flowdiff.config", "parse_config"),
    # store
    "Store": ("flowdiff.store", "Store"),
    "open_store": ("flowdiff.store", "open_store"),
    # collect
    "collect": ("flowdiff.collect", "collect"),
    "CollectResult": ("flowdiff.collect", "CollectResult"),
    "open_capture": ("flowdiff.capture", "open_capture"),
    "Aggregator": ("flowdiff.aggregate", "Aggregator"),
    # baseline, rules, diff
    "learn": ("flowdiff.baseline", "learn"),
    "accept": ("flowdiff.triage", "accept"),
    "deny": ("flowdiff.triage", "deny"),
    "ignore": ("flowdiff.triage", "ignore"),
    "TriageResult": ("flowdiff.triage", "TriageResult"),
    "rollback": ("flowdiff.baseline", "rollback"),
    "baseline_history": ("flowdiff.baseline", "history"),
    "baseline_rows": ("flowdiff.baseline", "show"),
    "baseline_diff": ("flowdiff.baseline", "diff_versions"),
    "load_rules": ("flowdiff.rules", "load_rules"),
    "add_rule": ("flowdiff.rules", "add_rule"),
    "diff": ("flowdiff.diff", "diff"),
    "DiffResult": ("flowdiff.archive", "DiffResult"),
    "list_reports": ("flowdiff.archive", "list_reports"),
    "load_report": ("flowdiff.archive", "load_report"),
    # report and mail
    "render_report": ("flowdiff.report", "render_report"),
    "archive_report": ("flowdiff.report", "archive_report"),
    "build_message": ("flowdiff.mail", "build_message"),
    "send": ("flowdiff.mail", "send"),
    "send_async": ("flowdiff.mail", "send_async"),
    "flush_outbox": ("flowdiff.mail", "flush_outbox"),
    "list_outbox": ("flowdiff.mail", "list_outbox"),
    "deliver": ("flowdiff.deliver", "deliver"),
    "find_packets": ("flowdiff.packets", "find_packets"),
    "PacketsResult": ("flowdiff.packets", "PacketsResult"),
    # pipeline and demo
    "run": ("flowdiff.pipeline", "run"),
    "watch": ("flowdiff.pipeline", "watch"),
    "run_demo": ("flowdiff.demo", "run_demo"),
    # sensor health
    "status": ("flowdiff.status", "status"),
    "check_health": ("flowdiff.health", "check"),
    # errors
    "FlowdiffError": ("flowdiff.errors", "FlowdiffError"),
    "ConfigError": ("flowdiff.errors", "ConfigError"),
    "CaptureError": ("flowdiff.errors", "CaptureError"),
    "StoreError": ("flowdiff.errors", "StoreError"),
    "BaselineError": ("flowdiff.errors", "BaselineError"),
    "RulesError": ("flowdiff.errors", "RulesError"),
    "ReportError": ("flowdiff.errors", "ReportError"),
    "MailError": ("flowdiff.errors", "MailError"),
    "LockError": ("flowdiff.errors", "LockError"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'flowdiff' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ``flowdiff.collect``/``diff``/``decode`` are functions, but also the names of the stage modules. Importing
# a submodule normally rebinds the package attribute to the module; this keeps the function there (the
# modules stay importable: ``from flowdiff.collect import find_captures``).
_SHADOWED = {name for name, (module, _) in _EXPORTS.items() if module == f"flowdiff.{name}"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
