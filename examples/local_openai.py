"""A tiny stand-in for the OpenAI API on 127.0.0.1, so the demo runs with no account and no network.

It answers chat completions (JSON and server-sent events, with the usage chunk
when ``stream_options.include_usage`` is set) and embeddings, with the same
shapes as the real API and fixed, plausible token counts.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = ["Metered", " per", " customer", ",", " to", " the", " token", "."]


def _usage(prompt: Any, completion: int) -> dict[str, Any]:
    prompt_tokens = max(8, len(json.dumps(prompt)) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path.endswith("/chat/completions"):
            self._chat(body)
        elif self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": [0.0] * 8}
                for i in range(len(inputs))
            ]
            usage = {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)}
            self._json({"object": "list", "data": data, "model": body["model"], "usage": usage})
        else:
            self._json({"error": {"message": "not found", "type": "invalid_request_error"}}, 404)

    def _json(self, payload: dict[str, Any], code: int = 200) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.send_header("x-request-id", "req_" + uuid.uuid4().hex[:16])
        self.end_headers()
        self.wfile.write(raw)

    def _chat(self, body: dict[str, Any]) -> None:
        base = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": body["model"] + "-2024-07-18",
            "system_fingerprint": "fp_demo",
            "service_tier": "default",
        }
        usage = _usage(body.get("messages"), len(REPLY))
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(REPLY)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("connection", "close")
        self.end_headers()
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}] + [{"content": w} for w in REPLY] + [{}]
        for i, delta in enumerate(deltas):
            finish = "stop" if i == len(deltas) - 1 else None
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            self._event({**chunk, "choices": [choice], "usage": None})
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**chunk, "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")


def serve() -> tuple[ThreadingHTTPServer, str]:
    """Start the stand-in on a free loopback port; returns the server and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
