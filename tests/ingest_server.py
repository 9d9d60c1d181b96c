"""A real HTTP ingest server on 127.0.0.1 that stands in for the cmdrdata events API.

It implements the two endpoints a usage-delivery pipeline talks to, records
every request it answers, deduplicates events the way the real API does, and
fails on command, so tests can check that each billable call is delivered
exactly once whatever goes wrong on the way.

Endpoints:

* ``POST /api/events`` -- one event (a JSON object with ``event_id``).  Answers
  ``201 {"status": "accepted", "event_id": ...}``, or
  ``200 {"status": "duplicate", "event_id": ...}`` when the ``Idempotency-Key``
  or the ``event_id`` was already accepted.
* ``POST /api/events/batch`` -- ``{"events": [event, ...]}``.  Answers
  ``200 {"results": [{"event_id": ..., "status": 201|200|4xx, "error": ...}, ...]}``
  in request order, so one bad event does not fail its batch.
* With ``api_key=...``, a missing or wrong ``Authorization: Bearer`` gives 401.
  Other paths give 404, other methods on those paths 405.

Typical use::

    with IngestServer(api_key="key") as server:
        server.fail(503, retry_after="0")   # the next request gets a 503
        server.reset_connection()           # the one after has its connection reset
        ...                                 # run the pipeline against server.url
        assert server.wait_for_events(3)
        assert server.accepted_ids() == {"e1", "e2", "e3"}

Faults (:meth:`IngestServer.fail`, :meth:`~IngestServer.rate_limit`,
:meth:`~IngestServer.redirect`, :meth:`~IngestServer.slow`,
:meth:`~IngestServer.reset_connection`) form one
FIFO script: each request takes the fault at the head of the queue, which then
applies to ``times`` requests in all (``None``: until :meth:`~IngestServer.clear`).
They apply to whole HTTP requests, batches included, before routing and
authentication.  :meth:`~IngestServer.reject_event` instead rejects one
``event_id`` wherever it appears, every time.

Two settings apply to every request, whatever the script says: ``latency``
(seconds each answer is held, as a distant API would; requests are held
concurrently) and ``fail_ratio`` (the share of requests answered
``fail_status``, 503 by default, drawn from a RNG seeded with ``seed``, so a
run is repeatable)::

    server.latency = 0.05
    server.fail_ratio = 0.6  Both can echo the request's
headers in the error body (``echo_headers=True``), as careless servers do, to
check that a client never stores or prints what comes back.

Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import random
import socket
import socketserver
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = ["BATCH_PATH", "EVENTS_PATH", "IngestServer", "ReceivedRequest"]

EVENTS_PATH = "/api/events"
BATCH_PATH = "/api/events/batch"

FaultKind = Literal["status", "slow", "reset"]

_MAX_BODY = 64 * 1024 * 1024
_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request the server answered, or faulted without answering.

    ``time`` is when the request had been read (``time.monotonic()``); requests are
    listed in the order they were answered.  ``status`` is the status the server
    sent, or ``None`` when the connection was reset or dropped without a response.
    ``fault`` names the fault that applied to it ("status", "slow" or "reset").
    """

    time: float
    method: str
    path: str
    #: Header names in lower case (repeated headers joined with ", ").
    headers: dict[str, str]
    #: The parsed JSON body, or None when the body is empty or not JSON.
    body: Any
    idempotency_key: str | None
    status: int | None
    fault: FaultKind | None = None

    @property
    def event_ids(self) -> list[str]:
        """The ``event_id``s the body carries (one event or a batch), in order."""
        body = self.body
        if not isinstance(body, dict):
            return []
        if self.path.rstrip("/") == BATCH_PATH:
            events = body.get("events")
            candidates = events if isinstance(events, list) else []
        else:
            candidates = [body]
        return [
            event["event_id"]
            for event in candidates
            if isinstance(event, dict) and isinstance(event.get("event_id"), str)
        ]


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int | None
    status: int = 500
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    echo_headers: bool = False


@dataclass(frozen=True)
class _Reply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Incoming:
    time: float
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


class _BadRequest(Exception):
    """The request's body framing is broken: answer 400 and close the connection."""


class IngestServer:
    """The events API on ``host`` (a free port by default); a context manager.

    ``start()``/``stop()`` run and end it; ``down()``/``up()`` take it off the
    network and back on the same port, keeping what it recorded.  All methods
    may be called from any thread.
    """

    def __init__(
        self, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0, seed: int = 0
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        #: Seconds every answer is held before it is sent (a distant API).
        self.latency = 0.0
        #: Share of requests answered ``fail_status`` (seeded: repeatable).
        self.fail_ratio = 0.0
        self.fail_status = 503
        self._rng = random.Random(seed)
        #: Every request answered (or faulted), in the order they were answered.
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._accepted: dict[str, dict[str, Any]] = {}
        self._accepted_keys: dict[str, str] = {}
        self._duplicates = 0
        self._rejections: dict[str, tuple[int, str, bool]] = {}
        self._rejected_ids: set[str] = set()
        self._faults: deque[_Fault] = deque()
        self._arrivals = 0
        self._connections = 0
        self._lifecycle = threading.RLock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> IngestServer:
        """Listen on ``host:port`` (the port found at the first start, if it was 0)."""
        with self._lifecycle:
            if self._httpd is not None:
                return self
            httpd = _HTTPServer((self.host, self.port), self)
            self.port = httpd.server_port
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ingest-server-{self.port}",
                daemon=True,
            )
            thread.start()
            self._httpd, self._thread = httpd, thread
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection (held slow responses included)."""
        with self._lifecycle:
            httpd, thread = self._httpd, self._thread
            if httpd is None:
                return
            self._httpd = self._thread = None
            httpd.stopping.set()
            httpd.shutdown()
            httpd.server_close()
            httpd.close_connections()
            httpd.join_handlers(_JOIN_TIMEOUT)
            if thread is not None:
                thread.join(_JOIN_TIMEOUT)

    def down(self) -> None:
        """Go off the network: new connections are refused, open ones are closed.

        Recorded requests, accepted events and queued faults are kept.
        """
        self.stop()

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        self.start()

    @property
    def running(self) -> bool:
        with self._lifecycle:
            return self._httpd is not None

    def __enter__(self) -> IngestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/api/events``."""
        return self.root_url + EVENTS_PATH

    @property
    def batch_url(self) -> str:
        """``http://127.0.0.1:PORT/api/events/batch``."""
        return self.root_url + BATCH_PATH

    # -- what was received

    def accepted(self) -> dict[str, dict[str, Any]]:
        """``event_id`` -> the body of the event when it was first accepted."""
        with self._lock:
            return dict(self._accepted)

    def accepted_ids(self) -> set[str]:
        with self._lock:
            return set(self._accepted)

    def duplicates(self) -> int:
        """Deliveries answered "duplicate" (an already accepted event_id or idempotency key)."""
        with self._lock:
            return self._duplicates

    def rejected_ids(self) -> set[str]:
        """The event_ids answered with a :meth:`reject_event` rejection at least once."""
        with self._lock:
            return set(self._rejected_ids)

    def received_ids(self) -> set[str]:
        """Every event_id seen in a recorded request, whatever the answer (or fault)."""
        with self._lock:
            return {event_id for request in self.requests for event_id in request.event_ids}

    def connections(self) -> int:
        """TCP connections accepted so far (to check that a client reuses its connections)."""
        with self._lock:
            return self._connections

    def wait_for_events(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` distinct events were accepted (False on timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._accepted) >= count, timeout)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` requests were recorded (False on timeout)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_for_arrivals(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests were read, including ones still held by :meth:`slow`."""
        with self._changed:
            return self._changed.wait_for(lambda: self._arrivals >= count, timeout)

    # -- faults

    def fail(
        self,
        status: int = 500,
        times: int | None = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
        echo_headers: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer ``status`` (with ``Retry-After`` if given) to the next ``times`` requests.

        ``headers`` are added to the answer; with ``echo_headers`` the body also
        carries the request's headers (``"request_headers": {...}``).
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after
        payload = body if body is not None else {"error": "injected failure", "status": status}
        self._enqueue(
            _Fault(
                "status",
                _times(times),
                status=status,
                body=payload,
                headers=extra,
                echo_headers=echo_headers,
            )
        )

    def redirect(self, location: str, status: int = 307, times: int | None = 1) -> None:
        """Answer ``status`` (a 3xx) with ``Location: location`` to the next ``times`` requests."""
        if not 300 <= status < 400:
            raise ValueError("a redirect status is 3xx")
        body = {"error": "moved", "location": location}
        self.fail(status, times, body=body, headers={"Location": location})

    def rate_limit(self, retry_after: str = "1", times: int | None = 1) -> None:
        """Answer 429 with ``Retry-After: retry_after`` to the next ``times`` requests."""
        self.fail(429, times, retry_after, {"error": "rate limit exceeded", "status": 429})

    def slow(self, seconds: float, times: int | None = 1) -> None:
        """Hold the next ``times`` requests ``seconds`` before handling them normally.

        The request is then processed as if it had just arrived, even if the client
        gave up meanwhile: an event it carries is accepted (or, if a retry got there
        first, counted by :meth:`duplicates`).  ``stop()``/``down()`` cut the wait
        short and drop the connection without a response (recorded with status None).
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._enqueue(_Fault("slow", _times(times), seconds=seconds))

    def reset_connection(self, times: int | None = 1) -> None:
        """Read the next ``times`` requests, then reset their connections (RST, no response)."""
        self._enqueue(_Fault("reset", _times(times)))

    def reject_event(
        self,
        event_id: str,
        status: int = 400,
        message: str = "invalid event",
        echo_headers: bool = False,
    ) -> None:
        """Always reject ``event_id`` with ``status`` and ``message``, alone or in a batch.

        With ``echo_headers`` the message ends with the request's headers, as JSON.
        """
        with self._lock:
            self._rejections[event_id] = (status, message, echo_headers)

    def clear(self) -> None:
        """Remove the queued faults and the :meth:`reject_event` rules (keep what was recorded)."""
        with self._lock:
            self._faults.clear()
            self._rejections.clear()

    def reset(self) -> None:
        """Remove all faults and forget every request, event and counter."""
        with self._changed:
            self._faults.clear()
            self._rejections.clear()
            self.requests.clear()
            self._accepted.clear()
            self._accepted_keys.clear()
            self._rejected_ids.clear()
            self._duplicates = 0
            self._arrivals = 0
            self._connections = 0
            self._changed.notify_all()

    @property
    def pending_faults(self) -> int:
        """How many faults are still queued."""
        with self._lock:
            return len(self._faults)

    def _enqueue(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    # -- used by the handler threads

    def _connected(self) -> None:
        with self._lock:
            self._connections += 1

    def _arrive(self) -> _Fault | None:
        """Count an arriving request and take the fault that applies to it."""
        with self._changed:
            self._arrivals += 1
            self._changed.notify_all()
            if not self._faults:
                if self.fail_ratio > 0 and self._rng.random() < self.fail_ratio:
                    return _Fault(
                        "status",
                        1,
                        status=self.fail_status,
                        body={"error": "random failure", "status": self.fail_status},
                    )
                return None
            fault = self._faults[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.popleft()
            return fault

    def _record(self, incoming: _Incoming, status: int | None, fault: FaultKind | None) -> None:
        with self._changed:
            self._append(incoming, status, fault)

    def _append(self, incoming: _Incoming, status: int | None, fault: FaultKind | None) -> None:
        self.requests.append(
            ReceivedRequest(
                time=incoming.time,
                method=incoming.method,
                path=incoming.path,
                headers=incoming.headers,
                body=incoming.body,
                idempotency_key=incoming.idempotency_key,
                status=status,
                fault=fault,
            )
        )
        self._changed.notify_all()

    def _process(self, incoming: _Incoming, fault: FaultKind | None) -> _Reply:
        """Answer a request normally; state and record change together, under the lock."""
        with self._changed:
            reply = self._route(incoming)
            self._append(incoming, reply.status, fault)
            return reply

    def _route(self, incoming: _Incoming) -> _Reply:
        path = incoming.path.rstrip("/")
        if path not in (EVENTS_PATH, BATCH_PATH):
            return _Reply(404, {"error": "not found", "path": incoming.path})
        if incoming.method != "POST":
            return _Reply(405, {"error": "method not allowed"}, {"Allow": "POST"})
        if not self._authorized(incoming.headers.get("authorization")):
            return _Reply(
                401, {"error": "missing or invalid API key"}, {"WWW-Authenticate": "Bearer"}
            )
        if path == EVENTS_PATH:
            return self._single(incoming)
        return self._batch(incoming)

    def _authorized(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return True
        expected = f"Bearer {self.api_key}".encode()
        return authorization is not None and hmac.compare_digest(
            authorization.encode("utf-8", "replace"), expected
        )

    def _single(self, incoming: _Incoming) -> _Reply:
        event = incoming.body
        if not isinstance(event, dict):
            return _Reply(400, {"error": "the body must be a JSON object"})
        event_id = event.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            return _Reply(400, {"error": "event_id is required (a non-empty string)"})
        status, error = self._deliver(event_id, event, incoming)
        if error is not None:
            return _Reply(status, {"error": error, "event_id": event_id})
        outcome = "accepted" if status == 201 else "duplicate"
        return _Reply(status, {"status": outcome, "event_id": event_id})

    def _batch(self, incoming: _Incoming) -> _Reply:
        body = incoming.body
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return _Reply(400, {"error": 'the body must be {"events": [...]}'})
        results: list[dict[str, Any]] = []
        for event in events:
            event_id = event.get("event_id") if isinstance(event, dict) else None
            if not isinstance(event, dict) or not isinstance(event_id, str) or not event_id:
                results.append(
                    {
                        "event_id": event_id if isinstance(event_id, str) else None,
                        "status": 400,
                        "error": "event_id is required (a non-empty string)",
                    }
                )
                continue
            status, error = self._deliver(event_id, event, incoming, batched=True)
            result: dict[str, Any] = {"event_id": event_id, "status": status}
            if error is not None:
                result["error"] = error
            results.append(result)
        return _Reply(200, {"results": results})

    def _deliver(
        self, event_id: str, event: dict[str, Any], incoming: _Incoming, batched: bool = False
    ) -> tuple[int, str | None]:
        """Accept, deduplicate or reject one event: (status, error message or None)."""
        key = None if batched else incoming.idempotency_key
        rejection = self._rejections.get(event_id)
        if rejection is not None:
            self._rejected_ids.add(event_id)
            status, message, echo = rejection
            if echo:
                message = f"{message}; request headers: {_echo(incoming.headers)}"
            return status, message
        if event_id in self._accepted or (key is not None and key in self._accepted_keys):
            self._duplicates += 1
            return 200, None
        self._accepted[event_id] = event
        if key is not None:
            self._accepted_keys[key] = event_id
        return 201, None


def _echo(headers: dict[str, str]) -> str:
    """The request's headers as JSON, sorted (``authorization`` comes early, as it does in
    many servers' dumps)."""
    return json.dumps(headers, sort_keys=True)


def _times(times: int | None) -> int | None:
    if times is not None and times < 1:
        raise ValueError("times must be >= 1 (or None: until clear())")
    return times


class _HTTPServer(ThreadingHTTPServer):
    """One listening period of an :class:`IngestServer` (``up()`` makes a new one)."""

    allow_reuse_address = True
    daemon_threads = True
    # stop() joins the handler threads itself, with a timeout.
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], ingest: IngestServer) -> None:
        self.ingest = ingest
        #: Set when this listening period ends: cuts held (slow) responses short.
        self.stopping = threading.Event()
        self._tracked = threading.Lock()
        self._open: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN: needless, and slow on some hosts.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs in the serve_forever thread, so once shutdown() returns every open
        # connection is in self._open and every handler thread in self._handlers.
        self.ingest._connected()
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="ingest-server-connection",
            daemon=True,
        )
        with self._tracked:
            self._open.add(request)
            self._handlers.add(thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._tracked:
                self._open.discard(request)
                self._handlers.discard(threading.current_thread())

    def close_connections(self) -> None:
        """Shut every open connection down: idle keep-alive reads end at once."""
        with self._tracked:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._tracked:
            handlers = [t for t in self._handlers if t is not threading.current_thread()]
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "IngestServer/1.0"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK would hold each keep-alive response ~40 ms.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            super().handle()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # -- request

    def _read_body(self) -> bytes | None:
        """The whole body (None if the client went away before sending all of it)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return None
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _BadRequest("bad chunk size") from None
                if size == 0:
                    while (trailer := self.rfile.readline(65537)) not in (b"\r\n", b"\n"):
                        if not trailer:
                            return None
                    return b"".join(parts)
                total += size
                if size < 0 or total > _MAX_BODY:
                    raise _BadRequest("bad chunk size")
                chunk = self.rfile.read(size)
                if len(chunk) < size or not self.rfile.readline(65537):
                    return None
                parts.append(chunk)
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        if length < 0 or length > _MAX_BODY:
            raise _BadRequest("bad Content-Length")
        body = self.rfile.read(length) if length else b""
        return body if len(body) == length else None

    def _serve(self) -> None:
        try:
            raw = self._read_body()
        except _BadRequest as error:
            self.close_connection = True
            self._send(_Reply(400, {"error": str(error)}))
            return
        if raw is None:
            self.close_connection = True
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        incoming = _Incoming(
            time=time.monotonic(),
            method=self.command,
            path=urlsplit(self.path).path,
            headers=headers,
            body=body,
        )
        ingest = self.server.ingest
        fault = ingest._arrive()
        kind = fault.kind if fault is not None else None
        if ingest.latency > 0 and self.server.stopping.wait(ingest.latency):
            ingest._record(incoming, None, kind)  # stopped meanwhile: no answer
            self._drop()
            return
        if fault is not None and fault.kind == "reset":
            ingest._record(incoming, None, kind)
            self._reset()
            return
        if fault is not None and fault.kind == "status":
            payload = fault.body
            if fault.echo_headers:
                payload = {
                    **(payload or {}),
                    "request_headers": json.loads(_echo(incoming.headers)),
                }
            reply = _Reply(fault.status, payload, dict(fault.headers))
            ingest._record(incoming, reply.status, kind)
            self._send(reply)
            return
        if fault is not None and fault.kind == "slow" and self.server.stopping.wait(fault.seconds):
            ingest._record(incoming, None, kind)
            self._drop()
            return
        self._send(ingest._process(incoming, kind))

    # -- response

    def _send(self, reply: _Reply) -> None:
        data = json.dumps(reply.payload).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        """End the connection without a response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _reset(self) -> None:
        """Close the connection abruptly: SO_LINGER 0 makes close() send a RST."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # rfile holds a reference to the socket: close it first so close() really closes.
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.connection.close()
