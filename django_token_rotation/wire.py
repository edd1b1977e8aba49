"""One hard wall-clock deadline per refresh, on the wire.

requests applies its timeout to each socket operation: a server that sends its
status line and headers a few bytes at a time is never cut off, and name
resolution has no timeout at all. Here:

* :func:`deadline` opens one budget for every HTTP call of a refresh (the
  discovery document, the token call, the JWKS fetch); :func:`ends_within`
  gives one call its end, within it.
* Each call of :mod:`.client` runs under a :class:`Guard`. Its connections come
  from urllib3 connection classes of our own (installed by :func:`arm` on the
  pool managers of the session allauth's adapter returns, proxies included),
  which resolve the name on a helper thread waited for no longer than the
  deadline, connect with what is left of it, and hand their socket to a
  watchdog thread that shuts it down when the deadline passes, wherever the
  call is blocked: connect, TLS handshake, status line, headers, body.
* Immediately before the request is written to the connected socket, the guard
  runs the caller's last check (:data:`BeforeSend`): the engine's lease.

It works the same with urllib3 1.26 and 2.x. Other transports mounted on the
session (a SOCKS proxy, a non-requests adapter) keep requests' per-operation
timeouts only.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.util.connection

from .exceptions import TokenRefreshUnavailable

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "token_rotation_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every HTTP call made inside shares one budget of ``seconds`` (wall clock),
    or the enclosing one if that ends sooner."""
    at = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(at if outer is None else min(at, outer))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left of the current :func:`deadline` (``None``: none is set)."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


def ends_within(timeout: float) -> float:
    """When a call given ``timeout`` seconds ends (``time.monotonic()``): no later
    than the current :func:`deadline`."""
    ends = time.monotonic() + timeout
    shared = _deadline.get()
    return ends if shared is None else min(ends, shared)


def guard(ends: float, before_send: BeforeSend | None) -> tuple[Guard, contextvars.Token[Any]]:
    """Guard the HTTP calls of this thread until :func:`unguard`."""
    current = Guard(ends, before_send)
    watched = _guard.set(current)
    _watchdog.watch(current)
    return current, watched


def unguard(current: Guard, watched: contextvars.Token[Any]) -> None:
    current.finish()
    _guard.reset(watched)


#: The caller's last word before the request goes out, given the seconds left
#: of the deadline: return to send, raise a TokenRotationError not to.
BeforeSend = Callable[[float], None]


class Expired(Exception):
    """The guard's deadline passed (never an OSError: urllib3 does not retry it)."""


class NotSent(Exception):
    """The last check before sending said no: ``Guard.refusal`` says why."""


class Guard:
    """One HTTP call's deadline (``time.monotonic()``) and its last check."""

    def __init__(self, ends: float, before_send: BeforeSend | None) -> None:
        self.ends = ends
        self.before_send = before_send
        #: Set by the watchdog when the deadline passed before the call ended.
        self.fired = False
        self.refusal: BaseException | None = None
        self._sent = False
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._done = False

    def left(self) -> float:
        return self.ends - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline. A duplicate of the descriptor is
        kept, so that it stays valid through a TLS wrap and cannot be reused for
        another connection before :meth:`finish`."""
        # A plain socket on a duplicate descriptor (an SSLSocket refuses dup()).
        copy = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        with self._lock:
            if not self._done and not self.fired:
                self._watched.append(copy)
                return
        _shut(copy)
        copy.close()

    def fire(self) -> None:
        """The deadline passed: break off whatever the call is blocked in."""
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._watched:
                _shut(sock)

    def finish(self) -> bool:
        """The call is over; returns whether the watchdog fired during it."""
        with self._lock:
            self._done = True
            watched, self._watched = self._watched, []
        for sock in watched:
            sock.close()
        return self.fired

    def check_before_send(self) -> None:
        """Run immediately before the request is written to a connected socket."""
        left = self.left()
        if self.fired or left <= 0:
            raise Expired
        if self.before_send is None:
            return
        if self._sent:
            # A site's urllib3 Retry that retries POSTs: once sent, a refresh
            # token is not sent again within this refresh.
            self.refusal = TokenRefreshUnavailable(
                "The request failed after it was sent; it is not sent again.",
                code="connection_error",
            )
            raise NotSent
        try:
            self.before_send(left)
        except BaseException as exc:
            self.refusal = exc
            raise NotSent from None
        self._sent = True


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_guard: contextvars.ContextVar[Guard | None] = contextvars.ContextVar(
    "token_rotation_guard", default=None
)


class _Watchdog:
    """One daemon thread per process that fires each guard at its deadline."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._queue: list[tuple[float, int, Guard]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, guard: Guard) -> None:
        with self._changed:
            heapq.heappush(self._queue, (guard.ends, next(self._order), guard))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="token-rotation-deadline", daemon=True
                )
                self._thread.start()
            elif self._queue[0][2] is guard:
                self._changed.notify()

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                while self._queue and self._queue[0][0] <= now:
                    heapq.heappop(self._queue)[2].fire()
                self._changed.wait(self._queue[0][0] - now if self._queue else None)


_watchdog = _Watchdog()


class _Lookup:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.addresses: list[Any] = []
        self.error: OSError | None = None


_lookups: dict[tuple[str, int, int], _Lookup] = {}
_lookups_guard = threading.Lock()


def _resolve(host: str, port: int, guard: Guard) -> list[Any]:
    """``getaddrinfo`` within the guard's deadline. It cannot be interrupted, so
    it runs on a helper thread (one per name at a time, shared by concurrent
    callers) that is left to finish on its own when the deadline passes."""
    family = urllib3.util.connection.allowed_gai_family()
    if _is_ip_address(host):
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    key = (host, port, int(family))
    with _lookups_guard:
        lookup = _lookups.get(key)
        if lookup is None:
            lookup = _lookups[key] = _Lookup()
            threading.Thread(
                target=_look_up, args=(key, lookup), name="token-rotation-resolve", daemon=True
            ).start()
    if not lookup.done.wait(max(guard.left(), 0.0)):
        raise Expired
    if lookup.error is not None:
        raise socket.gaierror(*lookup.error.args)
    return lookup.addresses


def _look_up(key: tuple[str, int, int], lookup: _Lookup) -> None:
    host, port, family = key
    try:
        lookup.addresses = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError as exc:
        lookup.error = exc
    finally:
        with _lookups_guard:
            if _lookups.get(key) is lookup:
                del _lookups[key]
        lookup.done.set()


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _open_socket(conn: Any, guard: Guard) -> socket.socket:
    """urllib3's ``create_connection`` within the guard's deadline."""
    host = conn._dns_host.strip("[]")
    error: OSError | None = None
    for family, kind, proto, _name, address in _resolve(host, conn.port, guard):
        left = guard.left()
        if left <= 0:
            raise Expired
        sock = socket.socket(family, kind, proto)
        try:
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(left)
            guard.watch(sock)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
        except OSError as exc:
            error = exc
            sock.close()
            continue
        return sock
    raise error or OSError("getaddrinfo returned no address")


class Guarded(urllib3.connection.HTTPConnection):
    """A urllib3 connection that keeps to the guard of the call in progress."""

    def _new_conn(self) -> socket.socket:
        guard = _guard.get()
        if guard is None:
            return super()._new_conn()
        try:
            return _open_socket(self, guard)
        except (Expired, TimeoutError) as exc:
            raise urllib3.exceptions.ConnectTimeoutError(
                self, f"Connection to {self.host} timed out."
            ) from exc
        except OSError as exc:
            raise urllib3.exceptions.NewConnectionError(
                self, f"Failed to establish a new connection: {type(exc).__name__}"
            ) from exc

    def request(self, *args: Any, **kwargs: Any) -> Any:
        guard = _guard.get()
        if guard is not None:
            # Connected (TCP, proxy tunnel, TLS) before the last check, so that
            # nothing but writing the request comes after it.
            if self.sock is None:
                self.connect()
            assert self.sock is not None
            guard.watch(self.sock)
            guard.check_before_send()
        return super().request(*args, **kwargs)


class GuardedHTTPS(Guarded, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = Guarded


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPS


def _arm_manager(manager: Any) -> None:
    """Make ``manager`` (a urllib3 PoolManager or ProxyManager) open guarded
    connections, unless its pools are not urllib3's own (a SOCKS proxy)."""
    classes = manager.pool_classes_by_scheme
    if (classes.get("http"), classes.get("https")) == (
        urllib3.HTTPConnectionPool,
        urllib3.HTTPSConnectionPool,
    ):
        manager.pool_classes_by_scheme = {**classes, "http": _HTTPPool, "https": _HTTPSPool}


class _ArmedManagers(dict[str, Any]):
    """requests' per-proxy managers, armed as requests creates them."""

    def __setitem__(self, proxy: str, manager: Any) -> None:
        _arm_manager(manager)
        super().__setitem__(proxy, manager)


def arm(session: requests.Session) -> None:
    """Guard every connection ``session``'s HTTP adapters open (requests'
    ``HTTPAdapter`` and subclasses, through proxies too); other transports
    keep requests' per-operation timeouts."""
    for adapter in session.adapters.values():
        if isinstance(adapter, requests.adapters.HTTPAdapter) and not isinstance(
            adapter.proxy_manager, _ArmedManagers
        ):
            _arm_manager(adapter.poolmanager)
            for manager in adapter.proxy_manager.values():
                _arm_manager(manager)
            adapter.proxy_manager = _ArmedManagers(adapter.proxy_manager)


def _after_fork_in_child() -> None:
    # Neither the watchdog thread nor the resolver threads survive a fork.
    global _watchdog, _lookups_guard
    _watchdog = _Watchdog()
    _lookups_guard = threading.Lock()
    _lookups.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
