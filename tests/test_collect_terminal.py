"""collect on a terminal: the progress bar gives the cursor back and ends its line (issue 8, item 13).

The real command runs on a pseudo-terminal (``pty``), as a user at a shell would run it, and the bytes the
terminal received are checked; the interrupted and failing cases drive the bar helper with a fake tty.
"""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowdiff.cli import _progress_bar
from flowdiff.demo import frames as synth

HIDE, SHOW = b"\x1b[?25l", b"\x1b[?25h"
ROOT = Path(__file__).resolve().parents[1]


def _on_a_terminal(args: list[str], cwd: Path, timeout: float = 120) -> tuple[int, bytes]:
    """Run ``python -m flowdiff ARGS`` with stdin, stdout and stderr on a new pseudo-terminal."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowdiff", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), out
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def _captures(directory: Path, n: int) -> list[Path]:
    directory.mkdir()
    out = []
    for i in range(n):
        frames = synth.udp_exchange(
            (1_700_000_000 + 60 * i) * 10**9,
            client_mac="02:00:00:00:00:01",
            server_mac="02:00:00:00:00:02",
            client="192.0.2.1",
            server="192.0.2.53",
            cport=40000 + i,
            sport=53,
            request=b"q",
            response=b"a",
        )
        out.append(synth.write_pcap(directory / f"2026120121{50 + i}00.pcap", frames))
    return out


def test_collect_on_a_terminal_shows_the_cursor_again_and_ends_the_bar_line(tmp_path):
    _captures(tmp_path / "spool", 2)
    rc, out = _on_a_terminal(["collect", "--all", "spool"], tmp_path)
    assert rc == 0, out
    assert out.count(HIDE) >= 1, out  # a bar was drawn (and hid the cursor)
    assert out.rfind(SHOW) > out.rfind(HIDE)  # ... and the cursor is back at the end
    text = out.decode()
    assert "100%" in text
    summary = text.index("2 files collected")
    assert text[summary - 2 : summary] == "\r\n"  # on a line of its own, not glued to the bar's 100%
    assert "100%2 files" not in text.replace("\x1b[?25h", "")


def test_collect_error_on_a_terminal_leaves_the_cursor_visible(tmp_path):
    rc, out = _on_a_terminal(["collect", "nothing/*.pcap"], tmp_path)
    assert rc == 2
    assert out.count(HIDE) == out.count(SHOW)
    assert b"Error: nothing/*.pcap: no file matches" in out


class _FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_bar_is_finished_when_collect_is_interrupted_or_fails(exc):
    """Ctrl-C (or an error) in the middle of a capture: the bar still ends its line and shows the cursor."""
    tty = _FakeTty()
    with pytest.raises(exc), _progress_bar(tty) as update:
        update("a.pcap", 10, 100)
        update("a.pcap", 40, 100)
        raise exc()
    text = tty.getvalue()
    assert HIDE.decode() in text and text.endswith(SHOW.decode() + "\n")


def test_one_bar_per_capture_each_on_its_own_line():
    tty = _FakeTty()
    with _progress_bar(tty) as update:
        for name in ("a.pcap", "b.pcap"):
            update(name, 50, 100)
            update(name, 100, 100)
    text = tty.getvalue()
    assert text.count(SHOW.decode() + "\n") == 2 and text.endswith(SHOW.decode() + "\n")
    assert text.rfind(SHOW.decode()) > text.rfind(HIDE.decode())
