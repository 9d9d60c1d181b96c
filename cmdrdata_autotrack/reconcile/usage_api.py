"""A client of OpenAI's organization Usage and Costs APIs (and of the key listing it needs).

``GET {base}/organization/usage/{endpoint}`` and ``GET {base}/organization/costs``
answer pages of time buckets (``{"object": "page", "data": [buckets], "has_more",
"next_page"}``), read here to the end. ``{base}`` is ``OPENAI_BASE_URL`` as the SDK
reads it (``https://api.openai.com/v1`` by default), so a proxy or a test server
can stand in.

The admin key is a secret with wide powers: it is registered with the log
redactor, sent only in the ``Authorization`` header, only over https (or plain
http to loopback), never through a redirect, and never appears in an error.
429 and 5xx answers and connection failures are retried, honouring
``retry-after-ms`` and ``Retry-After``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from .._version import __version__
from ..export.backoff import backoff_delay, retry_after_seconds
from ..export.client import endpoint_problem, safe_extract
from ..telemetry.logging import register_secret
from .buckets import MAX_PAGE, Window
from .model import CostRecord, Units, UsageEndpoint, UsageRecord

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ADMIN_KEY_ENV = "OPENAI_ADMIN_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 6
BACKOFF_BASE_S = 0.5
MAX_WAIT_S = 60.0  # the longest wait between attempts, whatever Retry-After says
TIMEOUT_S = (5.0, 60.0)  # connect, read
MAX_PAGES = 10_000  # of one listing: a server that never stops paging is an error
COSTS_PAGE = 180
LIST_PAGE = 100


class AdminAPIError(Exception):
    """The Usage/Costs API could not be read. The message is safe to print (no key)."""


@dataclass(frozen=True)
class ProjectKey:
    """A project API key as the admin API lists it: its id and redacted value only."""

    id: str
    project_id: str
    redacted_value: str
    name: str


def base_url_problem(url: str) -> str | None:
    """Why the admin key may not be sent to ``url`` (https only, plain http to loopback)."""
    return endpoint_problem(url, "OpenAI base URL")


class AdminAPI:
    """Reads usage, costs and project keys with an admin key (a context manager)."""

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        attempts: int = ATTEMPTS,
        timeout: tuple[float, float] = TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        problem = base_url_problem(base_url)
        if problem:
            raise AdminAPIError(problem)
        if not admin_key or any(c.isspace() or not c.isprintable() for c in admin_key):
            raise AdminAPIError(f"{ADMIN_KEY_ENV} is empty or has whitespace in it")
        register_secret(admin_key)  # whatever echoes it back, logs and messages mask it
        self.base_url = base_url.rstrip("/")
        self._key = admin_key
        self._attempts = max(1, attempts)
        self._timeout = timeout
        self._sleep = sleep
        self._rand = rand
        self._session = requests.Session()
        if urlsplit(self.base_url).scheme.lower() == "http":
            # Plain http goes to loopback only: never to a proxy from the environment.
            self._session.trust_env = False

    def __enter__(self) -> AdminAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"AdminAPI({self.base_url!r}, <key redacted>)"

    # --- the endpoints -----------------------------------------------------------------------

    def usage(
        self,
        endpoint: UsageEndpoint,
        window: Window,
        *,
        group_by: Sequence[str] = (),
        project_ids: Sequence[str] = (),
        api_key_ids: Sequence[str] = (),
    ) -> list[UsageRecord]:
        """Every result of ``endpoint`` in ``window``, grouped by the fields it accepts."""
        params: list[tuple[str, str]] = [
            ("start_time", str(window.start)),
            ("end_time", str(window.end)),
            ("bucket_width", window.name),
            ("limit", str(MAX_PAGE[window.name])),
        ]
        params += [("group_by[]", g) for g in group_by if g in endpoint.group_fields]
        params += [("project_ids[]", p) for p in project_ids]
        if "api_key_id" in endpoint.group_fields:
            params += [("api_key_ids[]", k) for k in api_key_ids]
        records: list[UsageRecord] = []
        path = f"/organization/usage/{endpoint.name}"
        for page in self._pages(path, params, "page"):
            records += parse_usage_page(endpoint, page)
        return records

    def costs(
        self,
        days: Window,
        *,
        group_by: Sequence[str] = ("line_item",),
        project_ids: Sequence[str] = (),
        api_key_ids: Sequence[str] = (),
    ) -> list[CostRecord]:
        """Every result of the Costs API in ``days`` (whole UTC days: its only bucket width)."""
        params: list[tuple[str, str]] = [
            ("start_time", str(days.start)),
            ("end_time", str(days.end)),
            ("bucket_width", "1d"),
            ("limit", str(COSTS_PAGE)),
        ]
        params += [("group_by[]", g) for g in group_by]
        params += [("project_ids[]", p) for p in project_ids]
        params += [("api_key_ids[]", k) for k in api_key_ids]
        records: list[CostRecord] = []
        for page in self._pages("/organization/costs", params, "page"):
            records += parse_costs_page(page)
        return records

    def project_keys(self) -> list[ProjectKey]:
        """The API keys of every project (archived ones too), without their values."""
        keys: list[ProjectKey] = []
        projects = self._list(
            "/organization/projects", [("limit", str(LIST_PAGE)), ("include_archived", "true")]
        )
        for project in projects:
            project_id = project.get("id")
            if not isinstance(project_id, str) or not project_id:
                raise AdminAPIError("the project listing has a project without an id")
            listing = self._list(
                f"/organization/projects/{project_id}/api_keys",
                [("limit", str(LIST_PAGE)), ("owner_project_access", "any")],
            )
            for item in listing:
                key_id, redacted = item.get("id"), item.get("redacted_value")
                if isinstance(key_id, str) and isinstance(redacted, str):
                    keys.append(ProjectKey(key_id, project_id, redacted, str(item.get("name", ""))))
        return keys

    # --- paging ------------------------------------------------------------------------------

    def _pages(
        self, path: str, params: list[tuple[str, str]], cursor: str
    ) -> Iterator[dict[str, Any]]:
        """Each page of a ``next_page`` listing (usage, costs)."""
        seen: set[str] = set()
        token: str | None = None
        for _ in range(MAX_PAGES):
            body = self._get(path, params + ([(cursor, token)] if token else []))
            yield body
            if body.get("has_more") is not True:
                return
            token = body.get("next_page")
            if not isinstance(token, str) or not token or token in seen:
                raise AdminAPIError(f"{path}: has_more is true but next_page gives no new page")
            seen.add(token)
        raise AdminAPIError(f"{path}: more than {MAX_PAGES} pages")

    def _list(self, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every item of an ``after``/``last_id`` listing (projects, API keys)."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        for _ in range(MAX_PAGES):
            body = self._get(path, params + ([("after", after)] if after else []))
            data = body.get("data")
            if not isinstance(data, list):
                raise AdminAPIError(f"{path}: the answer has no data list")
            items += [item for item in data if isinstance(item, dict)]
            if body.get("has_more") is not True:
                return items
            last = body.get("last_id") or (items[-1].get("id") if items else None)
            if not isinstance(last, str) or not last or last == after:
                raise AdminAPIError(f"{path}: has_more is true but there is no next page")
            after = last
        raise AdminAPIError(f"{path}: more than {MAX_PAGES} pages")

    # --- one request, retried ----------------------------------------------------------------

    def _get(self, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
        url = self.base_url + path
        headers = {
            "Authorization": f"Bearer {self._key}",
            "Accept": "application/json",
            "User-Agent": f"cmdrdata-autotrack/{__version__} (reconcile)",
        }
        problem = ""
        for attempt in range(self._attempts):
            wait: float | None = None
            try:
                response = self._session.get(
                    url,
                    params=params,
                    headers=headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                problem = f"{path}: cannot reach {self.base_url} ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    return _json_object(path, response)
                if status not in RETRYABLE:
                    raise AdminAPIError(_refusal(path, response))
                problem = f"{path}: HTTP {status} ({_error_message(response)})"
                wait = _retry_after(response)
            if attempt + 1 < self._attempts:
                if wait is None:
                    wait = backoff_delay(attempt, BACKOFF_BASE_S, MAX_WAIT_S, self._rand)
                self._sleep(min(wait, MAX_WAIT_S))
        raise AdminAPIError(f"{problem}; gave up after {self._attempts} attempts")


def _retry_after(response: requests.Response) -> float | None:
    """``retry-after-ms`` (what OpenAI sends) or ``Retry-After`` (seconds or a date)."""
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    return retry_after_seconds(response.headers.get("retry-after"))


def _error_message(response: requests.Response) -> str:
    """OpenAI's ``{"error": {"message"}}``, or the start of the body: redacted, one line."""
    try:
        body = response.json()
        message = body["error"]["message"]
        text = message if isinstance(message, str) else json.dumps(message)
    except (ValueError, KeyError, TypeError):
        text = response.text or response.reason or ""
    return safe_extract(text.replace("\n", " "), 200) or "no message"


def _refusal(path: str, response: requests.Response) -> str:
    status = response.status_code
    message = _error_message(response)
    if status == 401:
        return f"{path}: HTTP 401, {ADMIN_KEY_ENV} was refused ({message})"
    if status == 403:
        return (
            f"{path}: HTTP 403, {ADMIN_KEY_ENV} may not read this "
            f"(an organization admin key with usage read access is needed): {message}"
        )
    if 300 <= status < 400:
        return f"{path}: HTTP {status}, a redirect (not followed: the key stays where it is sent)"
    if status == 404:
        return f"{path}: HTTP 404: is the base URL right (it ends in /v1)? {message}"
    return f"{path}: HTTP {status}: {message}"


def _json_object(path: str, response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise AdminAPIError(f"{path}: the answer is not JSON") from None
    if not isinstance(body, dict):
        raise AdminAPIError(f"{path}: the answer is not a JSON object")
    return body


# --- reading the pages ------------------------------------------------------------------------


def _amount(value: object, what: str) -> float:
    """A count or amount from the API: a finite non-negative number (``null``: zero)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdminAPIError(f"{what} is {safe_extract(repr(value), 40)}, not a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise AdminAPIError(f"{what} is {number!r}, not a non-negative number")
    return number


def _money(value: object, what: str) -> float:
    """An amount of money: any finite number (credits and adjustments may be negative)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AdminAPIError(f"{what} is {safe_extract(repr(value), 40)}, not a number")
    return float(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _buckets(page: dict[str, Any], path: str) -> Iterator[tuple[int, int, list[Any]]]:
    data = page.get("data")
    if not isinstance(data, list):
        raise AdminAPIError(f"{path}: the page has no data list")
    for bucket in data:
        if not isinstance(bucket, dict):
            raise AdminAPIError(f"{path}: a bucket is not an object")
        start, end, results = (
            bucket.get("start_time"),
            bucket.get("end_time"),
            bucket.get("results"),
        )
        if not isinstance(start, int) or not isinstance(end, int) or not isinstance(results, list):
            raise AdminAPIError(f"{path}: a bucket lacks start_time, end_time or results")
        yield start, end, results


def parse_usage_page(endpoint: UsageEndpoint, page: dict[str, Any]) -> list[UsageRecord]:
    """The results of one page of ``/organization/usage/{endpoint}``."""
    path = f"/organization/usage/{endpoint.name}"
    records: list[UsageRecord] = []
    for start, end, results in _buckets(page, path):
        for result in results:
            if not isinstance(result, dict):
                raise AdminAPIError(f"{path}: a result is not an object")
            units = Units()
            for unit, names in endpoint.unit_fields:
                total = sum(_amount(result.get(n), f"{path}: {n}") for n in names)
                setattr(units, unit, total)
            batch = result.get("batch")
            record = UsageRecord(
                endpoint.name,
                start,
                end,
                _text(result.get("model")),
                {
                    "project_id": _text(result.get("project_id")),
                    "api_key_id": _text(result.get("api_key_id")),
                    "batch": batch if isinstance(batch, bool) else None,
                    "service_tier": _text(result.get("service_tier")),
                },
                units,
            )
            if endpoint.name == "vector_stores":
                record.storage_bytes = int(_amount(result.get("usage_bytes"), f"{path}: bytes"))
            records.append(record)
    return records


def parse_costs_page(page: dict[str, Any]) -> list[CostRecord]:
    """The results of one page of ``/organization/costs``."""
    path = "/organization/costs"
    records: list[CostRecord] = []
    for start, end, results in _buckets(page, path):
        for result in results:
            if not isinstance(result, dict):
                raise AdminAPIError(f"{path}: a result is not an object")
            amount = result.get("amount")
            amount = amount if isinstance(amount, dict) else {}
            records.append(
                CostRecord(
                    start,
                    end,
                    _money(amount.get("value"), f"{path}: amount.value"),
                    str(amount.get("currency") or "usd").lower(),
                    _text(result.get("line_item")),
                    _text(result.get("project_id")),
                    _text(result.get("api_key_id")),
                )
            )
    return records
