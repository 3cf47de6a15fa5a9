"""Start-up of a collect: a tiny capture never imports numba (flowdiff/_jit.py runs its kernels as plain
Python); a larger one imports it on the first kernel call, with the BLAS-probe skip and the lean cache
load of flowdiff/_numba.py (installed by the CLI entry point, not by importing a library module), which
keep scipy.linalg and numba's target refresh out of a compiling process without making them unusable.

Each check runs in a fresh interpreter: these are about what a process imports, once.
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


def _big_capture(tmp_path: Path) -> Path:
    """A capture above the interpreted-path limit (tcpdump__pptp.pcap's records, repeated)."""
    from flowdiff._jit import INTERPRET_BYTES

    blob = (DATA / "tcpdump__pptp.pcap").read_bytes()
    path = tmp_path / "big.pcap"
    path.write_bytes(blob[:24] + blob[24:] * (INTERPRET_BYTES // len(blob) + 2))
    return path


def test_importing_the_library_changes_nothing():
    proc = _python("""
        import sys
        before = list(sys.meta_path)
        import flowdiff.capture, flowdiff.decode, flowdiff.aggregate, flowdiff.collect, flowdiff.diff
        added = [f for f in sys.meta_path if f not in before]
        assert not [f for f in added if type(f).__module__.startswith("flowdiff")], added
        assert "numba" not in sys.modules  # kernels are made on first call (flowdiff/_jit.py)
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
            import numba, numpy as np
            @numba.njit(cache=False)
            def dot(a, b):  # np.dot probes BLAS again when it compiles: it still has it
                return np.dot(a, b)
            assert (dot(np.ones((2, 3)), np.ones((3, 2))) == 3.0).all()
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
    capture = _big_capture(tmp_path)
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
    # numba did compile (which imports arraymath) or load its cache (which starts the runtime)
    assert "numba.np.arraymath" in imported or "numba.core.runtime.nrtdynmod" in imported
    assert "scipy.linalg" not in imported


def test_cached_collect_skips_the_target_refresh_and_pandas(tmp_path):
    """Start-up of a cron run: with the numba cache filled (by the first run), collect loads compiled
    code without numba's target refresh (which would import numba.np.arraymath and every other
    implementation module) and never imports pandas."""
    capture = _big_capture(tmp_path)
    code = (
        "import sys\nfrom flowdiff.cli import main\n"
        f"sys.argv = ['flowdiff', 'collect', '--store', {str(tmp_path / 'store')!r}, {str(capture)!r}]\n"
        "main()\n"
    )
    first = _python(code)
    assert first.returncode == 0 and first.stdout.startswith("1 file collected"), first.stderr[-2000:]
    (tmp_path / "store").rename(tmp_path / "first")
    proc = _python(code, "-X", "importtime")
    assert proc.returncode == 0 and proc.stdout.startswith("1 file collected"), proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "numba.core.runtime.nrtdynmod" in imported  # compiled code was loaded and run
    assert "numba.np.arraymath" not in imported
    assert "pandas" not in imported


def test_tiny_collect_never_imports_numba(tmp_path):
    """A cron pass over a capture of a few packets: the kernels run interpreted, numba (and pandas) are
    never imported, and the rows are stored (tests/test_jit.py proves them equal to the compiled ones)."""
    capture = DATA / "tcpdump__pptp.pcap"
    code = (
        "import sys\nfrom flowdiff.cli import main\n"
        f"sys.argv = ['flowdiff', 'collect', '--store', {str(tmp_path / 'store')!r}, {str(capture)!r}]\n"
        "main()\n"
    )
    proc = _python(code, "-X", "importtime")
    assert proc.returncode == 0 and proc.stdout.startswith("1 file collected"), proc.stderr[-2000:]
    assert "rows written" in proc.stdout and " 0 rows" not in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "flowdiff.aggregate" in imported
    assert "numba" not in imported and "llvmlite" not in imported
    assert "pandas" not in imported
    big = _python(code.replace(str(capture), str(_big_capture(tmp_path))), "-X", "importtime")
    assert big.returncode == 0 and big.stdout.startswith("1 file collected"), big.stderr[-2000:]
    assert "numba" in {line.rsplit("|", 1)[-1].strip() for line in big.stderr.splitlines() if "|" in line}


LEAN_CACHE = """
import sys
from flowdiff._numba import lean_cache_load
lean_cache_load()
lean_cache_load()
import numba, numpy as np
from numba.core import caching
assert caching.Cache.load_overload._flowdiff_lean
sys.path.insert(0, sys.argv[1])
import lean_mod
print(lean_mod.total(np.arange(10.0)), lean_mod.fresh(3))
"""

LEAN_MOD = """
import numba, numpy as np

@numba.njit(cache=True)
def total(a):
    out = np.empty(1)  # needs the runtime (NRT) that a lean load must still start
    out[0] = a.sum()
    return out[0]

@numba.njit(cache=False)
def fresh(x):
    return x * 7
"""


def test_lean_cache_load_compiles_and_loads(tmp_path):
    """The patched cache load: the first process compiles (a cache miss still refreshes and compiles),
    the second loads the cached code, and a function without a cache compiles in either."""
    (tmp_path / "lean_mod.py").write_text(LEAN_MOD)
    env_dir = str(tmp_path)
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(LEAN_CACHE), env_dir],
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split() == ["45.0", "21"]
    assert list((tmp_path / "__pycache__").glob("lean_mod.total-*.nbi"))
