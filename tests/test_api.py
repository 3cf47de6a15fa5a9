"""The public API: an honest __all__, documented names, and the notebook-style calls on a real store."""

from __future__ import annotations

import subprocess
import sys
import types

import pandas as pd
import pytest

import flowdiff
from flowdiff.demo import frames as synth


def test_all_is_honest():
    for name in flowdiff.__all__:
        obj = getattr(flowdiff, name)
        if name != "__version__":
            assert obj.__doc__, f"flowdiff.{name} has no docstring"
    public = {
        n
        for n in dir(flowdiff)
        if not n.startswith("_")
        and n not in ("annotations", "importlib", "Any")
        and not isinstance(getattr(flowdiff, n), types.ModuleType)  # submodules, e.g. flowdiff.demo
    }
    assert public <= set(flowdiff.__all__), public - set(flowdiff.__all__)
    with pytest.raises(AttributeError):
        flowdiff.no_such_name  # noqa: B018


def test_stage_functions_are_not_shadowed_by_their_modules():
    import flowdiff.collect as _c  # noqa: F401  (importing the submodule must not rebind the name)
    from flowdiff.diff import DiffResult

    assert callable(flowdiff.collect) and flowdiff.collect.__name__ == "collect"
    assert callable(flowdiff.diff) and flowdiff.DiffResult is DiffResult


def test_import_is_light():
    """`import flowdiff` must not pull in pandas or numba: the CLI's --help stays instant."""
    code = "import sys, flowdiff; print('pandas' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_store_api_on_a_collected_capture(tmp_path):
    frames = synth.tcp_session(
        1_700_000_000 * 10**9,
        client_mac="02:00:00:00:00:01",
        server_mac="02:00:00:00:00:02",
        client="192.0.2.7",
        server="192.0.2.25",
        cport=51000,
        sport=25,
        exchanges=[(True, b"HELO\r\n")],
    )
    cap = synth.write_pcap(tmp_path / "a.pcap", frames)
    config = flowdiff.parse_config({"store": str(tmp_path / "store"), "sensor": "nb"})
    result = flowdiff.collect([cap], config)
    assert isinstance(result, flowdiff.CollectResult) and result.packets == len(frames)
    store = flowdiff.open_store(tmp_path / "store")
    assert store.tables() == ["hosts", "link", "pairs", "services", "stations"]
    svc = store.read("services", where={"service_port": 25}, columns=["client", "server", "packets"])
    assert svc.to_dict("records") == [{"client": "192.0.2.7", "server": "192.0.2.25", "packets": len(frames)}]
    empty = store.read("services", since="2100-01-01")
    assert isinstance(empty, pd.DataFrame) and empty.empty
    assert str(empty["service_port"].dtype) == "uint16"
    assert flowdiff.list_reports(config) == []
