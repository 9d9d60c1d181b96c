"""A small HTTP server for operators: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``.

Off unless ``CMDRDATA_METRICS_PORT`` is set; it listens on ``CMDRDATA_METRICS_HOST``
(loopback by default). The bootstrap opens it at start-up, so probes answer before
the app imports ``openai``; the agent attaches its gauges and readiness to the same
server when it starts (:func:`serve`: one server, one port, a process).

``/healthz`` answers 200 while the server runs (liveness). ``/readyz`` answers 200
when the agent can deliver (or records to the ledger), 503 with the reason otherwise:
delivery refused at start-up (insecure endpoint), key or endpoint refused by the API,
or the circuit breaker open. Before the agent starts, delivery has not been checked:
``/readyz`` answers 200 and says so (a 503 would keep a pod that imports ``openai``
on its first request out of service, so that request would never come).

Built on :mod:`socketserver` rather than :mod:`http.server`, which would add about
20 ms of imports (``http.client``, ``ssl``, ``email``) to the app's start-up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .. import forksafe
from . import metrics
from .logging import logger

PREFIX = "cmdrdata_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}
NOT_STARTED = (
    "ready: waiting for the app to import openai (the agent has not started; "
    "delivery is not checked until it does)"
)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
MAX_LINE = 8192  # bytes of a request or header line
MAX_HEADERS = 100
CLIENT_TIMEOUT_S = 10.0  # a client that stalls doesn't keep its thread

Gauges = Callable[[], Mapping[str, float]]
Readiness = Callable[[], tuple[bool, str]]
Breaker = Callable[[], "str | None"]


def prometheus_text(
    counters: Mapping[str, int],
    observations: Mapping[str, Mapping[str, float]],
    gauges: Mapping[str, float],
    breaker: str | None,
) -> str:
    """The agent's metrics in the Prometheus text exposition format."""
    lines: list[str] = []
    for name, description in metrics.DESCRIPTIONS.items():
        metric = f"{PREFIX}{name}_total"
        lines += [
            f"# HELP {metric} {description}",
            f"# TYPE {metric} counter",
            f"{metric} {counters.get(name, 0)}",
        ]
    for name, stats in sorted(observations.items()):
        metric = f"{PREFIX}{name}"
        lines += [
            f"# HELP {metric} {name.replace('_', ' ')}",
            f"# TYPE {metric} summary",
            f"{metric}_count {int(stats['count'])}",
            f"{metric}_sum {stats['sum']:.6f}",
        ]
    for name, value in sorted(gauges.items()):
        metric = f"{PREFIX}{name}"
        lines += [f"# TYPE {metric} gauge", f"{metric} {value:g}"]
    if breaker is not None:
        metric = f"{PREFIX}circuit_breaker_state"
        lines += [
            f"# HELP {metric} 0 closed, 1 half-open, 2 open",
            f"# TYPE {metric} gauge",
            f"{metric} {BREAKER_VALUES.get(breaker, 0)}",
        ]
    return "\n".join(lines) + "\n"


class Sources(NamedTuple):
    """Where the server reads the agent's state; swapped in one assignment by :meth:`attach`."""

    gauges: Gauges | None
    readiness: Readiness | None
    breaker: Breaker | None


class _Handler(socketserver.StreamRequestHandler):
    """GET and HEAD, one request a connection (``Connection: close``)."""

    timeout = CLIENT_TIMEOUT_S

    def handle(self) -> None:
        request = self.rfile.readline(MAX_LINE).decode("latin-1").split()
        for _ in range(MAX_HEADERS):  # headers are read and ignored
            if self.rfile.readline(MAX_LINE) in (b"\r\n", b"\n", b""):
                break
        if len(request) != 3 or not request[2].startswith("HTTP/"):
            self._reply(400, "bad request\n", head=False)
            return
        method, target = request[0], request[1]
        if method not in ("GET", "HEAD"):
            self._reply(405, "method not allowed\n", head=False, extra="Allow: GET, HEAD\r\n")
            return
        owner: HealthServer = self.server.owner  # type: ignore[attr-defined]
        code, body, ctype = owner.answer(target.split("?", 1)[0])
        self._reply(code, body, head=method == "HEAD", ctype=ctype)

    def _reply(
        self, code: int, body: str, head: bool, ctype: str = "text/plain", extra: str = ""
    ) -> None:
        raw = body.encode()
        header = (
            f"HTTP/1.1 {code} {REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(raw)}\r\n{extra}Connection: close\r\n\r\n"
        )
        self.wfile.write(header.encode("latin-1") + (b"" if head else raw))


class _Listener(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # rebind at once after a restart (connections in TIME_WAIT)
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: HealthServer) -> None:
        self.owner = owner
        if ":" in address[0]:  # an IPv6 address, such as "::" (every interface)
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver would print a traceback on the app's stderr
        logger.debug("cmdrdata: metrics request from %s failed", client_address, exc_info=True)


class HealthServer:
    """The listening socket and its thread. Binds in the constructor (``OSError`` if it can't)."""

    def __init__(
        self,
        host: str,
        port: int,
        gauges: Gauges | None = None,
        readiness: Readiness | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.sources = Sources(gauges, readiness, breaker)
        self.server = _Listener((host, port), self)
        self.asked = (host, port)
        self.host, self.port = host, int(self.server.server_address[1])
        self.pid = os.getpid()  # the process whose thread answers
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="cmdrdata-metrics", daemon=True
        )

    def attach(self, gauges: Gauges, readiness: Readiness, breaker: Breaker) -> None:
        """The agent started: serve its gauges, readiness and breaker from now on."""
        self.sources = Sources(gauges, readiness, breaker)

    @property
    def attached(self) -> bool:
        return self.sources.readiness is not None

    @property
    def serving(self) -> bool:
        """Answered by this process (a forked child only holds a copy of the parent's)."""
        return self.pid == os.getpid() and self.thread.is_alive()

    def answer(self, path: str) -> tuple[int, str, str]:
        """Status, body and content type for ``GET path``."""
        if path == "/metrics":
            return 200, self.metrics_text(), CONTENT_TYPE
        if path == "/healthz":
            return 200, "ok\n", "text/plain"
        if path == "/readyz":
            ready, reason = self.readiness()
            return (200 if ready else 503), reason + "\n", "text/plain"
        return 404, "not found\n", "text/plain"

    def readiness(self) -> tuple[bool, str]:
        sources = self.sources
        if sources.readiness is None:
            return True, NOT_STARTED
        return sources.readiness()

    def metrics_text(self) -> str:
        sources = self.sources
        try:
            gauges = dict(sources.gauges()) if sources.gauges is not None else {}
        except Exception:
            gauges = {}
        gauges["agent_started"] = 1.0 if sources.readiness is not None else 0.0
        breaker = sources.breaker() if sources.breaker is not None else None
        return prometheus_text(metrics.snapshot(), metrics.observations(), gauges, breaker)

    def start(self) -> HealthServer:
        self.thread.start()
        logger.info("metrics and health on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        global _server, _tried
        with _lock:
            if _server is self:
                _server, _tried = None, False
        if self.serving:
            self.server.shutdown()
        self.server.server_close()  # in a forked child: only its copy of the socket

    def disown(self) -> None:
        """In a forked child: close the inherited copy of the socket; the parent serves."""
        self.server.server_close()


# --- the process's one server ------------------------------------------------------------------

_lock = threading.Lock()
_server: HealthServer | None = None
_tried = False  # one bind a process: a failed one is not retried
_deferred: str | None = None  # "port in use" seen at start-up, logged when the agent starts
_parent_serves = False  # forked from the process that serves: "port in use" is expected


def serve(
    host: str, port: int, *, at_start_up: bool = False, gauges: Gauges | None = None
) -> HealthServer | None:
    """This process's health server, bound and started by the first call (``None`` if it
    could not bind). The bootstrap calls it at start-up (``gauges``: what it can show
    before the agent starts), the agent when it starts (then :meth:`HealthServer.attach`).

    A port in use is logged once, when the agent starts, not at start-up: any Python
    process that inherits the environment (a ``multiprocessing`` helper, a subprocess)
    tries the port, and only those that meter have reason to say it was taken.
    """
    global _server, _tried, _deferred
    with _lock:
        if _server is not None:
            if (host, port) != _server.asked:
                logger.warning(
                    "cmdrdata: metrics already served on %s:%d; %s:%d not opened",
                    _server.host,
                    _server.port,
                    host,
                    port,
                )
            return _server
        if _tried:
            if _deferred is not None and not at_start_up:
                logger.warning("%s", _deferred)
                _deferred = None
            return None
        _tried = True
        try:
            server = HealthServer(host, port, gauges)
        except Exception as exc:  # OSError mostly; an unencodable host is a UnicodeError
            message = f"cmdrdata: could not serve metrics on {host}:{port}: " + (
                (exc.strerror or str(exc)) if isinstance(exc, OSError) else repr(exc)
            )
            if getattr(exc, "errno", None) != errno.EADDRINUSE:
                logger.warning("%s", message)
            elif _parent_serves:
                logger.debug("%s (a parent process serves it)", message)
            elif at_start_up:
                logger.debug("%s", message)
                _deferred = message
            else:
                logger.warning("%s", message)
            return None
        try:
            _server = server.start()
        except Exception:  # no thread to be had (the interpreter is shutting down)
            server.server.server_close()
            logger.warning("cmdrdata: could not start the metrics server", exc_info=True)
            return None
        return _server


def _after_fork_in_child() -> None:
    global _lock, _server, _tried, _deferred, _parent_serves
    _lock = threading.Lock()  # the parent's may have been held by another thread
    inherited, _server, _tried, _deferred = _server, None, False, None
    _parent_serves = _parent_serves or inherited is not None  # or a grandparent
    if inherited is not None:
        # a child holding the socket would keep the port bound, with nobody answering,
        # after the parent exits
        with contextlib.suppress(OSError):
            inherited.disown()


forksafe.register(_after_fork_in_child)
