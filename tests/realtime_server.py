"""A fake of OpenAI's WebSocket APIs on 127.0.0.1: Realtime (GA and beta) and Responses.

It is a real ``websockets`` server (the library the SDK connects with) that answers
each client event as the API does, closely enough for the SDK's connection classes:

* ``/realtime``: ``session.created`` on connect (``transcription_session.created`` for a
  beta transcription session); ``session.update`` gets ``session.updated``;
  ``response.create`` gets ``response.created``, text and audio deltas and a
  ``response.done`` whose ``response.usage`` has every token detail;
  ``input_audio_buffer.commit`` gets ``committed``, the item, and
  ``conversation.item.input_audio_transcription.completed`` with a token or duration usage.
  The beta protocol (header ``OpenAI-Beta: realtime=v1``) has its own event names.
* ``/responses``: ``response.create`` gets ``response.created``, text deltas and
  ``response.completed`` with the Responses API's usage.

Each ``response.create`` takes the next action from :attr:`RealtimeServer.script`
(default ``"ok"``): ``"reject"`` (an ``error`` event instead of a response), ``"drop"``
(the TCP connection is cut after ``response.created``), ``"hang"`` (the response never
finishes), ``"malformed"`` (a ``response.done`` whose usage is not valid),
``"no_usage"`` (``usage`` is null), ``"no_response"`` (``response.done`` without its
``response``). Every frame sent and received is logged per connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

# A realistic GA Realtime usage report: input includes cached, the details add up.
REALTIME_USAGE: dict[str, Any] = {
    "total_tokens": 1372,
    "input_tokens": 1160,
    "output_tokens": 212,
    "input_token_details": {
        "text_tokens": 420,
        "audio_tokens": 700,
        "image_tokens": 40,
        "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 52, "audio_tokens": 160},
}
TRANSCRIPTION_TOKENS: dict[str, Any] = {
    "type": "tokens",
    "input_tokens": 96,
    "output_tokens": 14,
    "total_tokens": 110,
    "input_token_details": {"text_tokens": 6, "audio_tokens": 90},
}
TRANSCRIPTION_DURATION: dict[str, Any] = {"type": "duration", "seconds": 2.75}
RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 37,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens": 11,
    "output_tokens_details": {"reasoning_tokens": 4},
    "total_tokens": 48,
}
MALFORMED_USAGE: dict[str, Any] = {
    "total_tokens": 30,
    "input_tokens": "20",  # a string: not a count
    "output_tokens": 10,
    "input_token_details": {"text_tokens": -5, "audio_tokens": 25},
    "output_token_details": {"text_tokens": 10, "audio_tokens": 0},
}
AUDIO_CHUNK = base64.b64encode(bytes(range(256)) * 8).decode()


@dataclass
class Connection:
    """One client connection as the server saw it."""

    path: str
    headers: dict[str, str]
    sent: list[bytes] = field(default_factory=list)
    received: list[str] = field(default_factory=list)

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def received_types(self) -> list[str]:
        return [json.loads(m).get("type") for m in self.received]


class RealtimeServer:
    def __init__(self) -> None:
        self.script: list[str] = []
        self.usage: dict[str, Any] = copy.deepcopy(REALTIME_USAGE)
        self.responses_usage: dict[str, Any] = copy.deepcopy(RESPONSES_USAGE)
        self.transcription_usage: dict[str, Any] | None = copy.deepcopy(TRANSCRIPTION_TOKENS)
        self.transcription_model = "gpt-4o-transcribe"
        self.connections: list[Connection] = []
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="realtime-server", daemon=True)
        self.port = 0
        self._thread.start()
        self._ready.wait(10)

    # --- the server's life ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The client's ``websocket_base_url`` (and, with http, its ``base_url``)."""
        return f"ws://127.0.0.1:{self.port}/v1"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.script = []
        self.usage = copy.deepcopy(REALTIME_USAGE)
        self.responses_usage = copy.deepcopy(RESPONSES_USAGE)
        self.transcription_usage = copy.deepcopy(TRANSCRIPTION_TOKENS)
        self.connections = []

    def stop(self) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(None))
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    # --- one connection -------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        conn = Connection(request.path, {k.lower(): v for k, v in request.headers.raw_items()})
        self.connections.append(conn)
        session = _Session(self, ws, conn)
        with contextlib.suppress(Exception):  # the client went away: nothing to answer
            await session.run()


class _Session:
    def __init__(self, server: RealtimeServer, ws: ServerConnection, conn: Connection) -> None:
        self.server = server
        self.ws = ws
        self.conn = conn
        self.responses_api = "/responses" in urlsplit(conn.path).path
        self.beta = "realtime=v1" in conn.headers.get("openai-beta", "")
        self.transcription = conn.query.get("intent") == "transcription"
        self.model = conn.query.get("model", "gpt-realtime")
        self.session: dict[str, Any] = self._initial_session()

    async def send(self, event: dict[str, Any]) -> None:
        event = {"event_id": self.server._id("event"), **event}
        data = json.dumps(event)
        self.conn.sent.append(data.encode())
        await self.ws.send(data)

    def _initial_session(self) -> dict[str, Any]:
        transcription = {"model": self.server.transcription_model}
        if self.beta:
            return {
                "id": self.server._id("sess"),
                "object": "realtime.transcription_session"
                if self.transcription
                else "realtime.session",
                "model": self.model,
                "modalities": ["text", "audio"],
                "input_audio_transcription": transcription,
                "turn_detection": None,
            }
        return {
            "id": self.server._id("sess"),
            "object": "realtime.session",
            "type": "transcription" if self.transcription else "realtime",
            "model": self.model,
            "output_modalities": ["audio"],
            "audio": {"input": {"transcription": transcription, "turn_detection": None}},
        }

    async def run(self) -> None:
        if not self.responses_api:
            kind = "transcription_session" if self.beta and self.transcription else "session"
            await self.send({"type": f"{kind}.created", "session": self.session})
        async for message in self.ws:
            text = message if isinstance(message, str) else message.decode()
            self.conn.received.append(text)
            event = json.loads(text)
            await self.answer(event)

    async def answer(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("session.update", "transcription_session.update"):
            self.session.update(event.get("session") or {})
            await self.send({"type": kind.replace("update", "updated"), "session": self.session})
        elif kind == "response.create":
            action = self.server.script.pop(0) if self.server.script else "ok"
            if self.responses_api:
                await self.respond_responses(event, action)
            else:
                await self.respond_realtime(event, action)
        elif kind == "input_audio_buffer.commit":
            await self.transcribe()

    # --- Realtime --------------------------------------------------------------------------

    async def respond_realtime(self, event: dict[str, Any], action: str) -> None:
        if action == "reject":
            await self.reject(event)
            return
        response_id = self.server._id("resp")
        response: dict[str, Any] = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "usage": None,
        }
        if not self.beta:
            response["conversation_id"] = "conv_1"
        await self.send({"type": "response.created", "response": response})
        if action == "drop":
            self.ws.transport.abort()  # no close frame: the client sees 1006
            return
        item_id = self.server._id("item")
        text_delta = "response.text.delta" if self.beta else "response.output_text.delta"
        audio_delta = "response.audio.delta" if self.beta else "response.output_audio.delta"
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        for piece in ("Hello", " there", ", mentions response.done in text"):
            await self.send({"type": text_delta, **where, "content_index": 0, "delta": piece})
        await self.send({"type": audio_delta, **where, "content_index": 1, "delta": AUDIO_CHUNK})
        if action == "hang":
            return
        done = {**response, "status": "completed", "usage": copy.deepcopy(self.server.usage)}
        done["output"] = [
            {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant"}
        ]
        if action == "malformed":
            done["usage"] = copy.deepcopy(MALFORMED_USAGE)
        elif action == "no_usage":
            done["usage"] = None
        if action == "no_response":
            await self.send({"type": "response.done"})
        else:
            await self.send({"type": "response.done", "response": done})

    async def reject(self, event: dict[str, Any]) -> None:
        error = {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "message": "Conversation already has an active response in progress.",
            "param": None,
            "event_id": event.get("event_id"),
        }
        await self.send({"type": "error", "error": error})

    async def transcribe(self) -> None:
        item_id = self.server._id("item")
        await self.send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None}
        )
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self.send({"type": added, "previous_item_id": None, "item": item})
        completed: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "content_index": 0,
            "transcript": "hello world",
        }
        if self.server.transcription_usage is not None:
            completed["usage"] = copy.deepcopy(self.server.transcription_usage)
        await self.send(completed)

    # --- Responses over WebSocket -----------------------------------------------------------

    async def respond_responses(self, event: dict[str, Any], action: str) -> None:
        if action == "reject":
            await self.send(
                {"type": "error", "code": "invalid_request", "message": "no", "param": None}
            )
            return
        response_id = self.server._id("resp")
        response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": 1_700_000_000,
            "status": "in_progress",
            "model": f"{event.get('model') or 'gpt-5'}-2025-08-07",
            "output": [],
            "usage": None,
        }
        await self.send({"type": "response.created", "sequence_number": 0, "response": response})
        if action == "drop":
            self.ws.transport.abort()
            return
        for number, piece in enumerate(("Hi", " there"), start=1):
            await self.send(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": number,
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                }
            )
        if action == "hang":
            return
        usage = copy.deepcopy(self.server.responses_usage)
        if action == "malformed":
            usage["output_tokens"] = -1
        completed = {**response, "status": "completed", "usage": usage}
        await self.send({"type": "response.completed", "sequence_number": 3, "response": completed})


@contextlib.contextmanager
def running() -> Iterator[RealtimeServer]:
    server = RealtimeServer()
    try:
        yield server
    finally:
        server.stop()
