"""A fake of OpenAI's work whose usage comes later, on 127.0.0.1: background responses,
Assistants runs, Batch (files upload, batch create/retrieve, output file content).

Separate from :mod:`fake_openai` (whose routes are the synchronous calls): the state
here lives across requests. A test moves work on explicitly (:meth:`finish`) or lets
polling move it (each retrieve of a run or a batch advances it one status), so no test
waits on time. Every request is recorded with its exact headers.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

USAGE = {
    "input_tokens": 21,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 9,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 30,
}
RUN_USAGE = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Stored:
    obj: dict[str, Any]
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:20]


def _message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": _id("msg_"),
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


class FakeDeferred:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.responses: dict[str, _Stored] = {}
        self.runs: dict[str, _Stored] = {}
        self.batches: dict[str, _Stored] = {}
        self.files: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle
    def start(self) -> FakeDeferred:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    # -- moving work on
    def finish(self, response_id: str) -> None:
        """The background response completes (with :data:`USAGE`)."""
        with self.lock:
            stored = self.responses[response_id].obj
            stored.update(status="completed", usage=dict(USAGE), output=[_message("done")])

    # -- responses
    def create_response(self, params: dict[str, Any]) -> dict[str, Any]:
        background = params.get("background") is True
        obj: dict[str, Any] = {
            "id": _id("resp_"),
            "object": "response",
            "created_at": 1700000000,
            "model": params.get("model", "gpt-4o-mini"),
            "status": "queued" if background else "completed",
            "background": background,
            "output": [] if background else [_message("hi")],
            "usage": None if background else dict(USAGE),
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        with self.lock:
            self.responses[obj["id"]] = _Stored(obj)
        return obj

    def response_events(self, obj: dict[str, Any], after: int) -> list[tuple[str, dict[str, Any]]]:
        """The stream of a (background) response from ``after``: it ends with its status."""
        queued = {**obj, "status": "queued", "usage": None, "output": []}
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": queued}),
            ("response.in_progress", {"response": {**queued, "status": "in_progress"}}),
        ]
        if obj["status"] == "completed":
            events.append(("response.completed", {"response": obj}))
        out = []
        for number, (kind, data) in enumerate(events):
            if number > after:
                out.append((kind, {"type": kind, "sequence_number": number, **data}))
        return out

    # -- runs
    def create_run(self, thread_id: str, params: dict[str, Any]) -> dict[str, Any]:
        obj = {
            "id": _id("run_"),
            "object": "thread.run",
            "created_at": 1700000000,
            "thread_id": thread_id,
            "assistant_id": params.get("assistant_id", "asst_1"),
            "status": "queued",
            "model": params.get("model") or "gpt-4o-mini",
            "instructions": "",
            "tools": [],
            "usage": None,
            "parallel_tool_calls": True,
        }
        with self.lock:
            self.runs[obj["id"]] = _Stored(obj)
        return obj

    def poll_run(self, run_id: str) -> dict[str, Any]:
        """Each retrieve moves the run on: queued, in_progress, completed (with usage)."""
        with self.lock:
            stored = self.runs[run_id]
            stored.polls += 1
            if stored.polls == 1:
                stored.obj["status"] = "in_progress"
            elif stored.obj["status"] == "in_progress":
                stored.obj.update(status="completed", usage=dict(RUN_USAGE))
            return dict(stored.obj)

    # -- batches
    def output_for(self, input_file: bytes) -> bytes:
        lines = []
        for raw in input_file.splitlines():
            if not raw.strip():
                continue
            request = json.loads(raw)
            body = request.get("body", {})
            lines.append(
                {
                    "id": _id("batch_req_"),
                    "custom_id": request["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": _id("req_"),
                        "body": {
                            "id": _id("chatcmpl-"),
                            "object": "chat.completion",
                            "created": 1700000000,
                            "model": body.get("model", "gpt-4o-mini"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 10,
                                "completion_tokens": 2,
                                "total_tokens": 12,
                            },
                        },
                    },
                    "error": None,
                }
            )
        return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()

    def poll_batch(self, batch_id: str) -> dict[str, Any]:
        """Each retrieve moves the batch on: validating, in_progress, completed."""
        with self.lock:
            stored = self.batches[batch_id]
            stored.polls += 1
            obj = stored.obj
            if stored.polls == 1:
                obj["status"] = "in_progress"
            elif obj["status"] == "in_progress":
                output = self.output_for(self.files[obj["input_file_id"]])
                file_id = _id("file-")
                self.files[file_id] = output
                count = output.count(b"\n")
                obj.update(
                    status="completed",
                    output_file_id=file_id,
                    request_counts={"total": count, "completed": count, "failed": 0},
                    usage={
                        "input_tokens": 10 * count,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": 2 * count,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": 12 * count,
                    },
                )
            return dict(obj)


_RUN_PATH = re.compile(r"/v1/threads/([^/]+)/runs(?:/([^/]+)(?:/(\w+))?)?")


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeDeferred
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        headers = {k.lower(): v for k, v in self.headers.items()}
        with fake.lock:
            fake.requests.append(Recorded(self.command, split.path, query, headers, body))
        params: dict[str, Any] = {}
        if body and "json" in headers.get("content-type", ""):
            params = json.loads(body)
        try:
            self._route(fake, self.command, split.path, query, params, body, headers)
        except KeyError:
            self._json({"error": {"message": "not found", "type": "invalid_request_error"}}, 404)

    def _route(
        self,
        fake: FakeDeferred,
        method: str,
        path: str,
        query: dict[str, str],
        params: dict[str, Any],
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        if method == "POST" and path == "/v1/responses":
            obj = fake.create_response(params)
            if params.get("stream"):
                self._sse([(k, d) for k, d in fake.response_events(obj, -1)])
            else:
                self._json(obj)
            return
        match = re.fullmatch(r"/v1/responses/([^/]+)(/cancel)?", path)
        if match:
            stored = fake.responses[match.group(1)]
            if match.group(2):
                if not stored.obj["background"]:
                    self._json({"error": {"message": "only background responses"}}, 400)
                    return
                with fake.lock:
                    usage = {**USAGE, "output_tokens": 3, "total_tokens": 24}
                    stored.obj.update(status="cancelled", usage=usage)
                self._json(stored.obj)
            elif query.get("stream") == "true":
                after = int(query.get("starting_after", "-1"))
                self._sse(fake.response_events(stored.obj, after))
            else:
                self._json(stored.obj)
            return
        match = _RUN_PATH.fullmatch(path)
        if match or path == "/v1/threads/runs":
            self._runs(fake, method, match, path, params)
            return
        if method == "POST" and path == "/v1/files":
            data = _multipart_file(body, headers.get("content-type", ""))
            file_id = _id("file-")
            fake.files[file_id] = data
            self._json(
                {
                    "id": file_id,
                    "object": "file",
                    "bytes": len(data),
                    "created_at": 1700000000,
                    "filename": "input.jsonl",
                    "purpose": "batch",
                    "status": "processed",
                }
            )
            return
        if method == "POST" and path == "/v1/batches":
            obj = {
                "id": _id("batch_"),
                "object": "batch",
                "endpoint": params["endpoint"],
                "input_file_id": params["input_file_id"],
                "completion_window": "24h",
                "status": "validating",
                "created_at": 1700000000,
            }
            with fake.lock:
                fake.batches[obj["id"]] = _Stored(obj)
            self._json(obj)
            return
        match = re.fullmatch(r"/v1/batches/([^/]+)", path)
        if match and method == "GET":
            self._json(fake.poll_batch(match.group(1)))
            return
        match = re.fullmatch(r"/v1/files/([^/]+)/content", path)
        if match:
            data = fake.files[match.group(1)]
            self._send(200, "application/octet-stream", data)
            return
        self._json({"error": {"message": f"no route {method} {path}"}}, 404)

    def _runs(
        self,
        fake: FakeDeferred,
        method: str,
        match: re.Match[str] | None,
        path: str,
        params: dict[str, Any],
    ) -> None:
        if method == "POST" and (path == "/v1/threads/runs" or (match and not match.group(2))):
            thread_id = match.group(1) if match else _id("thread_")
            obj = fake.create_run(thread_id, params)
            if params.get("stream"):
                done = {**obj, "status": "completed", "usage": dict(RUN_USAGE)}
                fake.runs[obj["id"]].obj.update(done)
                step = {"id": _id("step_"), "object": "thread.run.step", "run_id": obj["id"]}
                events = [
                    ("thread.run.created", obj),
                    ("thread.run.in_progress", {**obj, "status": "in_progress"}),
                    (
                        "thread.run.step.completed",
                        {**step, "status": "completed", "usage": {**RUN_USAGE, "total_tokens": 1}},
                    ),
                    ("thread.run.completed", done),
                ]
                if path == "/v1/threads/runs":
                    thread = {"id": thread_id, "object": "thread", "created_at": 1700000000}
                    events.insert(0, ("thread.created", thread))
                self._sse(events, done_marker=True)
            else:
                self._json(obj)
            return
        assert match is not None
        self._json(fake.poll_run(match.group(2)))

    # -- replies
    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, "application/json", json.dumps(obj).encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", _id("req_"))
        self.send_header("openai-poll-after-ms", "1")
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str, dict[str, Any]]], done_marker: bool = False) -> None:
        parts = [f"event: {kind}\ndata: {json.dumps(data)}\n\n" for kind, data in events]
        if done_marker:
            parts.append("event: done\ndata: [DONE]\n\n")
        self._send(200, "text/event-stream", "".join(parts).encode())


def _multipart_file(body: bytes, content_type: str) -> bytes:
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data.rsplit(b"\r\n", 1)[0]
    return b""
