"""The numba BLAS-probe skip (flowdiff/_numba.py): installed by the CLI entry point, not by importing a
library module, and it keeps scipy.linalg out of a compiling process without making it unimportable.

Each check runs in a fresh interpreter: the skip is about what a process imports, once.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
needs_scipy = pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed")


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, *args, "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


COMPILE = """
import numba
@numba.njit(cache=False)
def twice(x):
    return 2 * x
assert twice(21) == 42
"""


def test_importing_the_library_changes_nothing():
    proc = _python("""
        import sys
        before = list(sys.meta_path)
        import flowdiff.capture, flowdiff.decode, flowdiff.aggregate
        assert sys.meta_path == before, sys.meta_path
        assert "numba.np.arraymath" not in sys.modules
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@needs_scipy
def test_first_compile_imports_scipy_linalg_without_the_skip():
    """The control: what the skip is there to avoid does happen in this environment."""
    proc = _python(COMPILE + "import sys; print('scipy.linalg' in sys.modules)")
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr


@needs_scipy
def test_skip_keeps_scipy_linalg_out_and_importable():
    proc = _python(
        "from flowdiff._numba import skip_blas_probe\nskip_blas_probe()\nskip_blas_probe()\n"
        + COMPILE
        + textwrap.dedent("""
            import sys
            from flowdiff._numba import _ProbeSkipper
            assert "numba.np.arraymath" in sys.modules
            assert "scipy.linalg" not in sys.modules
            assert not any(isinstance(f, _ProbeSkipper) for f in sys.meta_path)  # one shot
            import scipy.linalg, scipy.linalg.cython_blas
            assert sys.modules["scipy.linalg.cython_blas"] is not None
            print("ok")
        """)
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@needs_scipy
def test_skip_stands_down_when_scipy_linalg_is_loaded():
    """A process that already uses scipy.linalg keeps numba's BLAS support."""
    proc = _python(
        "import scipy.linalg\nfrom flowdiff._numba import skip_blas_probe\nskip_blas_probe()\n"
        + COMPILE
        + textwrap.dedent("""
            import numba, numpy as np
            @numba.njit(cache=False)
            def dot(a, b):
                return np.dot(a, b)
            assert dot(np.ones(3), np.ones(3)) == 3.0
            print("ok")
        """)
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@needs_scipy
def test_flowdiff_collect_never_imports_scipy_linalg(tmp_path):
    """The user's command, watched with -X importtime: collect compiles (or loads cached) numba code
    without importing scipy.linalg."""
    capture = DATA / "tcpdump__pptp.pcap"
    proc = _python(
        "import sys\nfrom flowdiff.cli import main\n"
        f"sys.argv = ['flowdiff', 'collect', '--store', {str(tmp_path / 'store')!r}, {str(capture)!r}]\n"
        "main()\n",
        "-X",
        "importtime",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("1 file collected"), proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "numba.np.arraymath" in imported  # numba did compile or load its cache
    assert "scipy.linalg" not in imported
