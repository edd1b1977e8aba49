"""A small scripted token endpoint: a real HTTP server on 127.0.0.1 for faults.

Each request to the token endpoint takes the next scripted :class:`Reply` (the
last one repeats); every request is recorded, so tests assert what the server
actually received. It also serves an OpenID Connect discovery document that
points back at itself.

Faults on the wire: a reply can wait (``delay``, ``hold``), drip its headers
(``header_drip``) or its body (``drip``); the server can speak TLS with a
self-signed certificate (:func:`self_signed`) and hold each handshake back
(``handshake_delay``).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

#: How often a test server's ``serve_forever`` looks for ``shutdown()`` (the
#: default, 0.5 s, was up to half a second in the teardown of every test).
SHUTDOWN_POLL = 0.02


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: Send the body in pieces, sleeping this long between them.
    drip: float = 0.0
    #: Send the status line and headers a byte at a time, sleeping this long between them.
    header_drip: float = 0.0
    #: Wait until this event is set before answering (a hung provider).
    hold: threading.Event | None = None
    #: Close the connection after reading the request, without answering.
    drop: bool = False
    #: No ``Content-Length``: the body ends where the server closes the
    #: connection (HTTP/1.0 style), so a cut body looks like a whole one.
    close_delimited: bool = False

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return self.body or b"", "application/octet-stream"


def tokens(
    access: str = "new-access",
    refresh: str | None = "new-refresh",
    expires_in: Any = 3600,
    **extra: Any,
) -> Reply:
    """A successful token response."""
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", **extra}
    if refresh is not None:
        body["refresh_token"] = refresh
    if expires_in is not None:
        body["expires_in"] = expires_in
    return Reply(200, body)


def oauth_error(code: str, status: int = 400, **headers: str) -> Reply:
    return Reply(status, {"error": code}, headers=dict(headers))


@dataclass
class Received:
    method: str
    path: str
    form: dict[str, str]
    headers: dict[str, str]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and 127.0.0.1 signed by itself, and its key:
    a client trusts it only when told to (``REQUESTS_CA_BUNDLE``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "scripted-cert.pem", directory / "scripted-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class ScriptedServer:
    def __init__(
        self, *, tls: tuple[Path, Path] | None = None, handshake_delay: float = 0.0
    ) -> None:
        self._lock = threading.Lock()
        self._script: list[Reply] = [tokens()]
        self.received: list[Received] = []
        #: Paths answered with a fixed reply, outside the script (a JWKS, say).
        self.static: dict[str, Reply] = {}
        self.on_request: Callable[[Received], None] | None = None
        #: Seconds the discovery document takes to arrive.
        self.discovery_delay = 0.0
        #: Seconds each TLS handshake is held back (the server reads nothing meanwhile).
        self.handshake_delay = handshake_delay
        #: Connections accepted (TLS or not), whether or not a request followed.
        self.connections = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake happens in the handler's thread, after handshake_delay.
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        self.base_url = (
            f"{scheme}://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        )
        self.token_url = f"{self.base_url}/token"
        # serve_forever polls for shutdown() every poll_interval (0.5 s by default):
        # every test that uses a server would wait up to that long in its teardown.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True
        )

    # -- scripting -----------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies`` in order; the last one repeats."""
        with self._lock:
            self._script = list(replies)
            self.received = []

    @property
    def token_requests(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == "/token"]

    def _next_reply(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            if len(self._script) > 1:
                return self._script.pop(0)
            return self._script[0]

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.base_url,
            "authorization_endpoint": f"{self.base_url}/authorize",
            "token_endpoint": self.token_url,
            "userinfo_endpoint": f"{self.base_url}/userinfo",
            "jwks_uri": f"{self.base_url}/jwks",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        }

    # -- plumbing ------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                with server._lock:
                    server.connections += 1
                if isinstance(self.request, ssl.SSLSocket):
                    time.sleep(server.handshake_delay)
                    # A client that gave up finds the socket closed; so does the handler.
                    with contextlib.suppress(OSError):
                        self.request.do_handshake()
                super().setup()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                path, _, query = self.path.partition("?")
                form = {k: v[0] for k, v in parse_qs(raw or query).items()}
                received = Received(self.command, path, form, dict(self.headers))
                if path.endswith("/.well-known/openid-configuration"):
                    with server._lock:
                        server.received.append(received)
                    time.sleep(server.discovery_delay)
                    self._send(Reply(200, server.discovery()))
                    return
                if path in server.static:
                    with server._lock:
                        server.received.append(received)
                    self._send(server.static[path])
                    return
                reply = server._next_reply(received)
                if server.on_request is not None:
                    try:
                        server.on_request(received)
                    finally:
                        # A callback may use the ORM: this handler thread's connections
                        # would outlive the test and block DROP DATABASE at teardown.
                        from django.db import connections

                        connections.close_all()
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.hold is not None:
                    reply.hold.wait(60)
                if reply.delay:
                    time.sleep(reply.delay)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                body, content_type = reply.encoded()
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": content_type, **reply.headers}
                    if reply.close_delimited:
                        headers["Connection"] = "close"
                        self.close_connection = True
                    for name, value in headers.items():
                        self.send_header(name, value)
                    if "Content-Length" not in headers and not reply.close_delimited:
                        self.send_header("Content-Length", str(len(body)))
                    if reply.header_drip:
                        buffered: list[bytes] = getattr(self, "_headers_buffer")  # noqa: B009
                        head = b"".join(buffered) + b"\r\n"
                        buffered.clear()
                        for i in range(len(head)):
                            self.wfile.write(head[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.header_drip)
                    else:
                        self.end_headers()
                    if reply.drip:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.drip)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = _answer
            do_POST = _answer

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def running(**options: Any) -> Iterator[ScriptedServer]:
    server = ScriptedServer(**options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
