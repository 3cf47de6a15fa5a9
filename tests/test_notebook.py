"""notebooks/explore.ipynb runs top to bottom against a freshly built demo store and draws its plots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_notebook_executes_and_plots(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    demo_dir = tmp_path / "demo"  # absent: the notebook's first cell builds it with run_demo
    monkeypatch.setenv("FLOWDIFF_DEMO_DIR", str(demo_dir))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # traffic per interval, top talkers, matrix heatmap, baseline vs new rows
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "exactly the injected anomalies" in text  # the demo was built by the notebook itself
    assert (demo_dir / "store").is_dir()
    assert "203.0.113.66:" in text and ":23" in text  # the drill-down reached the telnet packets
    assert "NEW" in text and "baseline" in text
