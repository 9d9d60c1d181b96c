"""A local fake of OpenAI's organization Usage, Costs and project-key APIs, for reconcile tests.

It listens on 127.0.0.1 and answers, with the shapes of the real API (checked
against the ``openai`` SDK's ``types/admin/organization`` models):

* ``GET /v1/organization/usage/{endpoint}`` for completions, embeddings,
  moderations, images, audio_speeches, audio_transcriptions, vector_stores and
  code_interpreter_sessions: ``start_time`` (required), ``end_time``,
  ``bucket_width`` (``1m``/``1h``/``1d``, default ``1d``), ``limit`` (default and
  maximum per width), ``page``, ``group_by``, ``project_ids``, ``api_key_ids``,
  ``models`` (arrays as ``name[]=`` or repeated ``name=``);
* ``GET /v1/organization/costs``: daily buckets only, ``group_by`` project_id,
  line_item, api_key_id, ``limit`` up to 180;
* ``GET /v1/organization/projects`` and ``.../projects/{id}/api_keys`` (``after``
  cursors, ``has_more``, ``last_id``).

Buckets are aligned as OpenAI aligns them: the first starts at ``start_time``
and ends at the next UTC boundary, the others are whole minutes, hours or days;
none starts after the present. A bucket without usage has ``"results": []``.
Results carry every grouping field, ``null`` unless grouped by it.

Usage is added as single records (:meth:`FakeOpenAIAdmin.add_usage`) that the
server sums per bucket and group; faults (:meth:`fail`) answer the next
requests with a status, headers and body. Requests are recorded with the
monotonic time they arrived. Only the standard library is used.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ADMIN_KEY = "sk-admin-TESTabcdef0123456789SECRET"

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, maximum)
PER_CALL = ("project_id", "user_id", "api_key_id", "model")
GROUPS: dict[str, tuple[str, ...]] = {
    "completions": (*PER_CALL, "batch", "service_tier"),
    "embeddings": PER_CALL,
    "moderations": PER_CALL,
    "images": (*PER_CALL, "size", "source"),
    "audio_speeches": PER_CALL,
    "audio_transcriptions": PER_CALL,
    "vector_stores": ("project_id",),
    "code_interpreter_sessions": ("project_id",),
}
COUNTS: dict[str, tuple[str, ...]] = {
    "completions": (
        "input_tokens",
        "output_tokens",
        "input_cached_tokens",
        "input_audio_tokens",
        "output_audio_tokens",
        "num_model_requests",
    ),
    "embeddings": ("input_tokens", "num_model_requests"),
    "moderations": ("input_tokens", "num_model_requests"),
    "images": ("images", "num_model_requests"),
    "audio_speeches": ("characters", "num_model_requests"),
    "audio_transcriptions": ("seconds", "num_model_requests"),
    "vector_stores": ("usage_bytes",),
    "code_interpreter_sessions": ("num_sessions",),
}
# The filters each endpoint accepts, and the record field each one filters on.
FILTERS: dict[str, str] = {
    "project_ids": "project_id",
    "api_key_ids": "api_key_id",
    "user_ids": "user_id",
    "models": "model",
}
COST_GROUPS = ("project_id", "user_id", "line_item", "api_key_id")


@dataclass
class AdminRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    arrived: float  # time.monotonic()

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k in (name, f"{name}[]")]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[-1] if found else None


@dataclass
class Fault:
    status: int
    path: str | None  # the path must end with this (any path when None)
    times: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


def _page_token(start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(start).encode()).decode()


def _page_start(token: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(token.removeprefix("page_").encode()).decode())
    except ValueError:
        raise _BadRequest("Invalid page cursor.", "page") from None


class FakeOpenAIAdmin:
    """The fake admin API (a context manager). ``base_url`` ends in ``/v1``."""

    def __init__(self, admin_key: str = ADMIN_KEY) -> None:
        self.admin_key = admin_key
        self.usage: dict[str, list[dict[str, Any]]] = {name: [] for name in GROUPS}
        self.costs: list[dict[str, Any]] = []
        self.projects: list[dict[str, Any]] = []
        self.keys: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[AdminRequest] = []
        self.list_page_size = 100  # the most items per project or key listing page
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle

    def __enter__(self) -> FakeOpenAIAdmin:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting

    def add_usage(self, endpoint: str, when: float, **fields: Any) -> None:
        """One usage record at ``when``: counts (``input_tokens=...``) and grouping fields."""
        unknown = set(fields) - set(COUNTS[endpoint]) - set(GROUPS[endpoint]) - {"batch"}
        assert not unknown, f"{endpoint} has no field(s) {unknown}"
        with self._lock:
            self.usage[endpoint].append({"time": when, **fields})

    def add_cost(self, when: float, value: float, **fields: Any) -> None:
        """One cost record at ``when`` (``line_item``, ``project_id``, ``api_key_id``)."""
        with self._lock:
            self.costs.append({"time": when, "value": value, **fields})

    def add_key(self, project_id: str, key_id: str, redacted_value: str, name: str = "") -> None:
        with self._lock:
            if not any(p["id"] == project_id for p in self.projects):
                self.projects.append(
                    {
                        "id": project_id,
                        "object": "organization.project",
                        "name": project_id,
                        "created_at": 1711471533,
                        "archived_at": None,
                        "status": "active",
                    }
                )
            self.keys.setdefault(project_id, []).append(
                {
                    "object": "organization.project.api_key",
                    "id": key_id,
                    "name": name or key_id,
                    "redacted_value": redacted_value,
                    "created_at": 1711471533,
                    "last_used_at": None,
                    "owner_project_access": "active",
                    "owner": {"type": "service_account", "service_account": {"id": "svc_1"}},
                }
            )

    def fail(
        self,
        status: int,
        *,
        path: str | None = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next ``times`` requests whose path ends with ``path`` with ``status``."""
        with self._lock:
            self._faults.append(Fault(status, path, times, dict(headers or {}), body))

    def requests_to(self, suffix: str) -> list[AdminRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    # -- serving

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        request = AdminRequest(
            "GET",
            parts.path,
            parse_qsl(parts.query, keep_blank_values=True),
            {k.lower(): v for k, v in handler.headers.items()},
            time.monotonic(),
        )
        with self._lock:
            self.requests.append(request)
            fault = next(
                (f for f in self._faults if f.path is None or parts.path.endswith(f.path)), None
            )
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        if fault is not None:
            body = fault.body
            if body is None:
                body = _error_body(f"fault {fault.status}", None, "rate_limit_exceeded")
            self._send(handler, fault.status, body, fault.headers)
            return
        presented = request.headers.get("authorization", "")
        if presented != f"Bearer {self.admin_key}":
            # Like OpenAI, name the key that was presented (the client must not print it).
            shown = presented.removeprefix("Bearer ")
            message = f"Incorrect API key provided: {shown}."
            self._send(handler, 401, _error_body(message, None, "invalid_api_key"))
            return
        try:
            body_obj = self._route(request)
        except _BadRequest as exc:
            self._send(handler, exc.status, _error_body(str(exc), exc.param, None))
            return
        self._send(handler, 200, json.dumps(body_obj).encode())

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _route(self, request: AdminRequest) -> dict[str, Any]:
        path = request.path
        prefix = "/v1/organization/"
        if not path.startswith(prefix):
            raise _BadRequest(f"Invalid URL (GET {path})", status=404)
        rest = path[len(prefix) :].strip("/").split("/")
        if rest[0] == "usage" and len(rest) == 2 and rest[1] in GROUPS:
            return self._usage(rest[1], request)
        if rest == ["costs"]:
            return self._costs(request)
        if rest == ["projects"]:
            with self._lock:
                projects = list(self.projects)
            return self._listing(projects, request)
        if len(rest) == 3 and rest[0] == "projects" and rest[2] == "api_keys":
            with self._lock:
                if rest[1] not in self.keys and not any(p["id"] == rest[1] for p in self.projects):
                    raise _BadRequest(f"No such project: {rest[1]}", status=404)
                keys = list(self.keys.get(rest[1], []))
            return self._listing(keys, request)
        raise _BadRequest(f"Invalid URL (GET {path})", status=404)

    # -- the usage and costs endpoints

    def _window(
        self, request: AdminRequest, width_name: str, limit_default: int, limit_max: int
    ) -> tuple[list[tuple[int, int]], str | None]:
        """This page's buckets and the next page's cursor."""
        start_text = request.value("start_time")
        if start_text is None or not start_text.isdigit():
            raise _BadRequest("start_time is required (Unix seconds).", "start_time")
        start = int(start_text)
        end_text = request.value("end_time")
        if end_text is not None and not end_text.isdigit():
            raise _BadRequest("end_time must be an integer.", "end_time")
        now = time.time()
        end = int(end_text) if end_text is not None else math.ceil(now)
        limit_text = request.value("limit")
        limit = (
            int(limit_text) if limit_text is not None and limit_text.isdigit() else limit_default
        )
        if limit_text is not None and not 1 <= limit <= limit_max:
            raise _BadRequest(f"limit must be between 1 and {limit_max}.", "limit")
        width = WIDTHS[width_name]
        page = request.value("page")
        cursor = _page_start(page) if page else start
        buckets: list[tuple[int, int]] = []
        moment = cursor
        while moment < end and moment <= now and len(buckets) < limit:
            bucket_end = min((moment // width + 1) * width, end)
            buckets.append((moment, bucket_end))
            moment = bucket_end
        more = moment < end and moment <= now
        return buckets, _page_token(moment) if more else None

    def _usage(self, endpoint: str, request: AdminRequest) -> dict[str, Any]:
        width = request.value("bucket_width") or "1d"
        if width not in WIDTHS:
            raise _BadRequest("bucket_width must be one of 1m, 1h, 1d.", "bucket_width")
        group_by = request.values("group_by")
        bad = [g for g in group_by if g not in GROUPS[endpoint]]
        if bad:
            raise _BadRequest(f"Invalid group_by value(s) for {endpoint}: {bad}.", "group_by")
        filters = {name: set(request.values(name)) for name in FILTERS if request.values(name)}
        accepted = {"project_ids"} if GROUPS[endpoint] == ("project_id",) else set(FILTERS)
        for name in filters:
            if name not in accepted:
                raise _BadRequest(f"{name} is not supported for {endpoint}.", name)
        default, maximum = LIMITS[width]
        buckets, next_page = self._window(request, width, default, maximum)
        with self._lock:
            records = list(self.usage[endpoint])
        data = []
        for start, end in buckets:
            inside = [
                r
                for r in records
                if start <= r["time"] < end
                and all(r.get(FILTERS[name]) in wanted for name, wanted in filters.items())
            ]
            data.append(
                {
                    "object": "bucket",
                    "start_time": start,
                    "end_time": end,
                    "results": self._results(endpoint, inside, group_by),
                }
            )
        return {
            "object": "page",
            "data": data,
            "has_more": next_page is not None,
            "next_page": next_page,
        }

    @staticmethod
    def _results(
        endpoint: str, records: list[dict[str, Any]], group_by: list[str]
    ) -> list[dict[str, Any]]:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for record in records:
            key = tuple(record.get(g, False if g == "batch" else None) for g in group_by)
            groups.setdefault(key, []).append(record)
        results = []
        for key, members in groups.items():
            result: dict[str, Any] = {"object": f"organization.usage.{endpoint}.result"}
            for name in COUNTS[endpoint]:
                result[name] = sum(m.get(name, 0) for m in members)
            for name in GROUPS[endpoint]:
                if name in ("size", "source"):
                    continue
                result[name] = key[group_by.index(name)] if name in group_by else None
            results.append(result)
        return results

    def _costs(self, request: AdminRequest) -> dict[str, Any]:
        width = request.value("bucket_width") or "1d"
        if width != "1d":
            raise _BadRequest("bucket_width must be 1d for costs.", "bucket_width")
        group_by = request.values("group_by")
        bad = [g for g in group_by if g not in COST_GROUPS]
        if bad:
            raise _BadRequest(f"Invalid group_by value(s) for costs: {bad}.", "group_by")
        projects = set(request.values("project_ids"))
        keys = set(request.values("api_key_ids"))
        buckets, next_page = self._window(request, "1d", 7, 180)
        with self._lock:
            records = list(self.costs)
        data = []
        for start, end in buckets:
            groups: dict[tuple[Any, ...], float] = {}
            for r in records:
                if not start <= r["time"] < end:
                    continue
                if projects and r.get("project_id") not in projects:
                    continue
                if keys and r.get("api_key_id") not in keys:
                    continue
                key = tuple(r.get(g) for g in group_by)
                groups[key] = groups.get(key, 0.0) + r["value"]
            results = []
            for key, value in groups.items():
                result: dict[str, Any] = {
                    "object": "organization.costs.result",
                    "amount": {"value": value, "currency": "usd"},
                }
                for name in ("line_item", "project_id", "api_key_id", "user_id"):
                    result[name] = key[group_by.index(name)] if name in group_by else None
                results.append(result)
            data.append(
                {"object": "bucket", "start_time": start, "end_time": end, "results": results}
            )
        return {
            "object": "page",
            "data": data,
            "has_more": next_page is not None,
            "next_page": next_page,
        }

    def _listing(self, items: list[dict[str, Any]], request: AdminRequest) -> dict[str, Any]:
        limit_text = request.value("limit")
        limit = int(limit_text) if limit_text and limit_text.isdigit() else 20
        if not 1 <= limit <= 100:
            raise _BadRequest("limit must be between 1 and 100.", "limit")
        limit = min(limit, self.list_page_size)
        after = request.value("after")
        position = 0
        if after:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise _BadRequest(f"No such object: {after}", "after")
            position = ids.index(after) + 1
        page = items[position : position + limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": position + limit < len(items),
        }


def _error_body(message: str, param: str | None, code: str | None) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        }
    ).encode()
