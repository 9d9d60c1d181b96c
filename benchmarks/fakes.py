"""Fast loopback stand-ins for the OpenAI API and the cmdrdata events API (stdlib only).

Both are built for measuring, not testing: every answer is pre-rendered and cached,
connections are kept alive, and Nagle's algorithm is off (headers and body leave in
one ``sendall`` anyway), so the client's cost dominates each request.

* :class:`FakeOpenAI` answers ``POST .../chat/completions`` (JSON, or a server-sent
  event stream with one HTTP chunk per event, as the real API sends it; the number of
  content chunks is the request's ``max_tokens``), ``.../responses`` and
  ``.../embeddings`` (1536 dimensions, base64 or floats).
* :class:`FakeIngest` answers ``POST /api/events`` (``201``) and
  ``POST /api/events/batch`` (``200`` with a per-event ``results`` list), counts what
  it received, and has ``GET /stats``, ``GET /wait?events=N&timeout=S`` (blocks until
  ``N`` events arrived: a worker can wait without spending its own CPU) and
  ``POST /reset``.

Run ``python benchmarks/fakes.py`` to serve both from their own process (so their CPU
is not charged to the process being measured): it prints one JSON line with the two
ports, then serves until its standard input closes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Reply = tuple[int, bytes, str, bool]  # status, body, content type, chunked SSE?
Handler = Callable[[str, str, dict[str, str], bytes], Reply]

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found"}
EMBEDDING_DIMENSIONS = 1536
MODEL = "gpt-4o-mini-2024-07-18"


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self.handler = handler
        super().__init__(("127.0.0.1", port), _Connection)


class _Connection(socketserver.StreamRequestHandler):
    """One keep-alive connection: read requests, answer each with one ``sendall``."""

    disable_nagle_algorithm = True
    server: _Server

    def handle(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while self._one_request():
                pass

    def _one_request(self) -> bool:
        line = self.rfile.readline(65537)
        if not line:
            return False
        parts = line.split()
        if len(parts) < 2:
            return False
        method, target = parts[0].decode(), parts[1].decode()
        headers: dict[str, str] = {}
        while True:
            raw = self.rfile.readline(65537)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, content_type, chunked = self.server.handler(method, target, headers, body)
        close = headers.get("connection", "").lower() == "close"
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}",
            f"content-type: {content_type}",
            "x-request-id: req_bench",
            "openai-processing-ms: 1",
        ]
        if chunked:
            head.append("transfer-encoding: chunked")
        else:
            head.append(f"content-length: {len(payload)}")
        if close:
            head.append("connection: close")
        self.connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        return not close


class LoopbackServer:
    """A :class:`_Server` on 127.0.0.1 in a background thread."""

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self._server = _Server(handler, port)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --- the OpenAI API ------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sse_chunked(events: list[bytes]) -> bytes:
    """Each server-sent event as one HTTP/1.1 chunk, then the last chunk."""
    out = bytearray()
    for event in events:
        data = b"data: " + event + b"\n\n"
        out += b"%x\r\n%s\r\n" % (len(data), data)
    out += b"0\r\n\r\n"
    return bytes(out)


def chat_completion() -> bytes:
    return _json(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1730000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello from the benchmark server.",
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 13,
                "completion_tokens": 7,
                "total_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
        }
    )


def http_chunks(body: bytes) -> list[bytes]:
    """The chunks of a body in HTTP/1.1 chunked encoding (as :func:`_sse_chunked` writes it)."""
    chunks, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end], 16)
        if size == 0:
            return chunks
        chunks.append(body[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2


def chat_stream(content_chunks: int, include_usage: bool) -> bytes:
    """A chat stream: a role chunk, ``content_chunks`` one-word chunks, a finish chunk,
    the usage chunk when asked for, and ``[DONE]``."""

    def chunk(choices: list[Any], usage: Any = None) -> bytes:
        body: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1730000000,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": "fp_bench",
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return _json(body)

    def delta(content: dict[str, Any], finish: str | None = None) -> list[Any]:
        return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

    events = [chunk(delta({"role": "assistant", "content": "", "refusal": None}))]
    events += [chunk(delta({"content": " word"})) for _ in range(content_chunks)]
    events.append(chunk(delta({}, "stop")))
    if include_usage:
        usage = {
            "prompt_tokens": 13,
            "completion_tokens": content_chunks,
            "total_tokens": 13 + content_chunks,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        events.append(chunk([], usage))
    events.append(b"[DONE]")
    return _sse_chunked(events)


def response_object() -> bytes:
    text = "Hello from the benchmark server."
    return _json(
        {
            "id": "resp_bench",
            "object": "response",
            "created_at": 1730000000,
            "status": "completed",
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": MODEL,
            "output": [
                {
                    "id": "msg_bench",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
                    ],
                }
            ],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": 13,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 7,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 20,
            },
            "user": None,
            "metadata": {},
        }
    )


def embeddings(count: int, as_base64: bool) -> bytes:
    vector = [((j * 17) % 64 - 32) / 1024 for j in range(EMBEDDING_DIMENSIONS)]
    embedding: Any = vector
    if as_base64:
        packed = struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *vector)
        embedding = base64.b64encode(packed).decode("ascii")
    data = [{"object": "embedding", "index": i, "embedding": embedding} for i in range(count)]
    return _json(
        {
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )


class FakeOpenAI:
    """The OpenAI API on loopback; answers are rendered once per shape and cached."""

    def __init__(self, port: int = 0) -> None:
        self._start_answering()
        self.server = LoopbackServer(self.handle, port)

    def _start_answering(self) -> None:
        self._cache: dict[tuple[Any, ...], Reply] = {}
        self._lock = threading.Lock()
        self.requests = 0

    @classmethod
    def answers(cls) -> Handler:
        """Its answers without a server (for a transport in the client's own process)."""
        fake = cls.__new__(cls)
        fake._start_answering()
        return fake.handle

    @property
    def base_url(self) -> str:
        return self.server.root_url + "/v1"

    def start(self) -> FakeOpenAI:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            self.requests += 1
        path = urlsplit(target).path
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            return 400, _json({"error": {"message": "bad JSON"}}), "application/json", False
        key: tuple[Any, ...]
        if path.endswith("/chat/completions"):
            stream = params.get("stream") is True
            chunks = params.get("max_tokens") or params.get("max_completion_tokens") or 5
            options = params.get("stream_options") or {}
            key = ("chat", stream, int(chunks), bool(options.get("include_usage")))
        elif path.endswith("/responses"):
            key = ("responses",)
        elif path.endswith("/embeddings"):
            raw = params.get("input")
            count = len(raw) if isinstance(raw, list) and raw and isinstance(raw[0], str) else 1
            key = ("embeddings", count, params.get("encoding_format") == "base64")
        else:
            return 404, _json({"error": {"message": f"no route {path}"}}), "application/json", False
        reply = self._cache.get(key)
        if reply is None:
            reply = self._cache[key] = self._render(key)
        return reply

    @staticmethod
    def _render(key: tuple[Any, ...]) -> Reply:
        if key[0] == "chat" and key[1]:
            return 200, chat_stream(key[2], key[3]), "text/event-stream; charset=utf-8", True
        if key[0] == "chat":
            return 200, chat_completion(), "application/json", False
        if key[0] == "responses":
            return 200, response_object(), "application/json", False
        return 200, embeddings(key[1], key[2]), "application/json", False


# --- the cmdrdata events API ------------------------------------------------------------------


class FakeIngest:
    """The events API on loopback: accepts everything, counts events and requests."""

    def __init__(self, port: int = 0) -> None:
        self._changed = threading.Condition()
        self.events = 0
        self.requests = 0
        self.batches = 0
        self.server = LoopbackServer(self.handle, port)

    @property
    def url(self) -> str:
        return self.server.root_url + "/api/events"

    def start(self) -> FakeIngest:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def _stats(self) -> bytes:
        return _json({"events": self.events, "requests": self.requests, "batches": self.batches})

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        split = urlsplit(target)
        path = split.path.rstrip("/")
        if method == "GET" and path == "/stats":
            with self._changed:
                return 200, self._stats(), "application/json", False
        if method == "GET" and path == "/wait":
            query = dict(parse_qsl(split.query))
            wanted = int(query.get("events", "0"))
            timeout = float(query.get("timeout", "60"))
            with self._changed:
                self._changed.wait_for(lambda: self.events >= wanted, timeout)
                return 200, self._stats(), "application/json", False
        if method == "POST" and path == "/reset":
            with self._changed:
                self.events = self.requests = self.batches = 0
                return 200, self._stats(), "application/json", False
        if method == "POST" and path == "/api/events":
            with self._changed:
                self.events += 1
                self.requests += 1
                self._changed.notify_all()
            return 201, b'{"status":"accepted"}', "application/json", False
        if method == "POST" and path == "/api/events/batch":
            try:
                events = json.loads(body).get("events") or []
            except (ValueError, AttributeError):
                return 400, b'{"error":"bad batch"}', "application/json", False
            results = [
                {"event_id": e.get("event_id"), "status": 201}
                for e in events
                if isinstance(e, dict)
            ]
            with self._changed:
                self.events += len(results)
                self.requests += 1
                self.batches += 1
                self._changed.notify_all()
            return 200, _json({"results": results}), "application/json", False
        return 404, b'{"error":"not found"}', "application/json", False


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve() -> None:
    """Serve both fakes until standard input closes; first print their ports as JSON."""
    openai_fake = FakeOpenAI().start()
    ingest = FakeIngest().start()
    print(json.dumps({"openai": openai_fake.server.port, "ingest": ingest.server.port}), flush=True)
    try:
        while sys.stdin.read(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        ingest.stop()
        openai_fake.stop()
        time.sleep(0.05)


if __name__ == "__main__":
    serve()
