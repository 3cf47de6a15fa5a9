"""A real SMTP server for the mail tests: aiosmtpd on 127.0.0.1, a random free port, messages kept.

Modes: plain, STARTTLS (required) and implicit TLS, each with a certificate issued by a throw-away
``trustme`` CA whose PEM file is handed to flowdiff as ``mail.cafile``; optional AUTH (PLAIN/LOGIN)
against one user name and password; a size limit (``size_limit``: aiosmtpd answers 552 above it) or a
refusal of every message (``refuse``: the reply to DATA). Import the fixtures from this module in a test file:
``from smtp_server import smtp_plain, smtp_tls, ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER = "sensor-bot"
PASSWORD = "s3cret-Pa55word-never-logged"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    when: float

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Inbox:
    """What the server accepted, in order; ``wait`` blocks until ``n`` messages arrived."""

    messages: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    refuse: str | None = None  # a reply such as "552 5.3.4 ..." given to DATA instead of accepting
    refused: int = 0  # messages answered with ``refuse``

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
        if self.refuse:
            self.refused += 1
            return self.refuse
        with self.cond:
            self.messages.append(
                Received(
                    envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content), time.time()
                )
            )
            self.cond.notify_all()
        return "250 2.0.0 Message accepted for delivery"

    def wait(self, n: int = 1, timeout: float = 10.0) -> list[Received]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)


class _Authenticator:
    def __init__(self, user: str, password: str):
        self.user, self.password = user.encode(), password.encode()
        self.attempts: list[str] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            self.user,
            self.password,
        )
        self.attempts.append(f"{mechanism}:{'ok' if ok else 'fail'}")
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 235/535 itself


@dataclass
class SMTPServer:
    """A running aiosmtpd server; ``mode`` is the flowdiff ``mail.tls`` value that reaches it."""

    mode: str  # "none" | "starttls" | "implicit"
    port: int
    inbox: Inbox
    cafile: Path | None
    auth: _Authenticator | None
    controller: Controller | None = None
    size_limit: int | None = None  # SIZE advertised and enforced by aiosmtpd (552 above it)

    def mail_kwargs(self) -> dict:
        """Keyword arguments for flowdiff.config.MailConfig that reach this server."""
        kw = dict(
            host="127.0.0.1",
            port=self.port,
            tls=self.mode,
            from_addr="flowdiff@sensor.test",
            to=("ops@example.test", "noc@example.test"),
            timeout=5.0,
        )
        if self.cafile:
            kw["cafile"] = str(self.cafile)
        if self.auth:
            kw["username"] = USER
            kw["password_env"] = "FLOWDIFF_TEST_SMTP_PASSWORD"
        return kw

    def start(self) -> None:
        self.controller = _make_controller(self)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
            self.controller = None


def _make_controller(srv: SMTPServer) -> Controller:
    kw: dict = {}
    tls_ctx = None
    if srv.cafile is not None:
        tls_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        srv._cert.configure_cert(tls_ctx)  # type: ignore[attr-defined]
    if srv.mode == "starttls":
        kw.update(tls_context=tls_ctx, require_starttls=True)
    elif srv.mode == "implicit":
        kw.update(ssl_context=tls_ctx)
    if srv.auth is not None:
        kw.update(authenticator=srv.auth, auth_required=True, auth_require_tls=srv.mode != "none")
    if srv.size_limit is not None:
        kw.update(data_size_limit=srv.size_limit)
    return Controller(srv.inbox, hostname="127.0.0.1", port=srv.port, ready_timeout=5.0, **kw)


def make_server(
    tmp_path: Path,
    mode: str = "none",
    *,
    auth: bool = False,
    start: bool = True,
    size_limit: int | None = None,
    refuse: str | None = None,
) -> SMTPServer:
    cafile = None
    cert = None
    if mode != "none":
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cafile = tmp_path / "smtp-test-ca.pem"
        ca.cert_pem.write_to_path(str(cafile))
    srv = SMTPServer(
        mode,
        free_port(),
        Inbox(refuse=refuse),
        cafile,
        _Authenticator(USER, PASSWORD) if auth else None,
        size_limit=size_limit,
    )
    srv._cert = cert  # type: ignore[attr-defined]
    if start:
        srv.start()
    return srv


@pytest.fixture
def smtp_plain(tmp_path):
    srv = make_server(tmp_path, "none")
    yield srv
    srv.stop()


@pytest.fixture
def smtp_starttls_auth(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWDIFF_TEST_SMTP_PASSWORD", PASSWORD)
    srv = make_server(tmp_path, "starttls", auth=True)
    yield srv
    srv.stop()


@pytest.fixture
def smtp_implicit(tmp_path):
    srv = make_server(tmp_path, "implicit")
    yield srv
    srv.stop()


@pytest.fixture
def smtp_down(tmp_path):
    """A server that is not running yet (connection refused); ``.start()`` brings it up on the same port."""
    srv = make_server(tmp_path, "none", start=False)
    yield srv
    srv.stop()


@pytest.fixture
def smtp_refusing(tmp_path):
    """A server that answers every DATA with a permanent refusal (552, like a size limit)."""
    srv = make_server(tmp_path, "none", refuse="552 5.3.4 Message size exceeds fixed maximum message size")
    yield srv
    srv.stop()


@pytest.fixture
def smtp_small(tmp_path):
    """A server that takes messages of at most 300 kB (aiosmtpd's own SIZE check: 552 above it)."""
    srv = make_server(tmp_path, "none", size_limit=300_000)
    yield srv
    srv.stop()
