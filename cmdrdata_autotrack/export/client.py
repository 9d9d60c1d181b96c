"""HTTP delivery to cmdrdata's events API (``requests``, pooled keep-alive connections).

Each answer is classified for the sender: delivered, retry later (408, 429, 5xx,
connection errors and timeouts, honouring ``Retry-After``), refused for good
(other 4xx: that event goes to the dead letters), or a set-up problem (401/403:
the key is refused; 404/405: the endpoint is wrong): events stay spooled until
it is fixed.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from .._version import __version__
from .backoff import retry_after_seconds

if TYPE_CHECKING:
    import requests

Outcome = Literal["delivered", "retry", "refused", "unauthorized", "misconfigured"]
RETRYABLE = frozenset({408, 425, 429})
CONNECT_TIMEOUT = 3.05
BATCH_NAMESPACE = uuid.UUID("6a0d1f3c-2b4e-4f7a-8c9d-0e1f2a3b4c5d")


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: int | None = None
    retry_after: float | None = None
    reason: str = ""


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` may not receive usage (HTTPS only, except on loopback), or ``None``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"endpoint {url!r} is not a URL"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return None
    if parts.scheme == "http":
        return f"endpoint {url!r} must use https (plain http is allowed on loopback only)"
    return f"endpoint {url!r} must be an https URL"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_problem(key: str) -> str | None:
    """What looks wrong with a tracker key (a warning only: the API has the last word)."""
    if key != key.strip():
        return "the tracker key has leading or trailing whitespace"
    if any(c.isspace() or not c.isprintable() for c in key):
        return "the tracker key contains whitespace or control characters"
    if len(key) < 16:
        return f"the tracker key is {len(key)} characters long (expected at least 16)"
    if not key.startswith("tk-"):
        return "the tracker key does not start with 'tk-' (is it an OpenAI key?)"
    return None


def classify(status: int, retry_after: str | None, body: str) -> Result:
    if 200 <= status < 300:
        return Result("delivered", status)
    if status in RETRYABLE or status >= 500:
        return Result("retry", status, retry_after_seconds(retry_after), f"HTTP {status}")
    if status in (401, 403):
        return Result("unauthorized", status, None, f"HTTP {status}: the tracker key was refused")
    if status in (404, 405):
        return Result("misconfigured", status, None, f"HTTP {status}: is CMDRDATA_ENDPOINT right?")
    return Result("refused", status, None, f"HTTP {status}: {body[:300]}")


class DeliveryClient:
    def __init__(
        self, endpoint: str, batch_endpoint: str | None, api_key: str, timeout: float
    ) -> None:
        import requests  # here, on the sender thread: never on the app's start-up path
        from requests.adapters import HTTPAdapter

        self._requests = requests
        self.endpoint = endpoint
        self.batch_endpoint = batch_endpoint or endpoint.rstrip("/") + "/batch"
        self.timeout = (CONNECT_TIMEOUT, timeout)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "User-Agent": f"cmdrdata-autotrack/{__version__}",
            }
        )

    def close(self) -> None:
        self.session.close()

    def _post(self, url: str, body: str, key: str) -> requests.Response | Result:
        requests = self._requests
        try:
            return self.session.post(
                url, data=body.encode(), headers={"Idempotency-Key": key}, timeout=self.timeout
            )
        except requests.Timeout:
            return Result("retry", None, None, "timed out")
        except requests.RequestException as exc:
            return Result("retry", None, None, f"connection failed: {type(exc).__name__}")

    def send_one(self, event_id: str, body: str) -> Result:
        response = self._post(self.endpoint, body, event_id)
        if isinstance(response, Result):
            return response
        return classify(response.status_code, response.headers.get("Retry-After"), response.text)

    def send_batch(self, events: Sequence[tuple[str, str]]) -> tuple[Result, dict[str, Result]]:
        """Post several events; returns the request's result and per-event results if given."""
        ids = sorted(event_id for event_id, _ in events)
        key = str(uuid.uuid5(BATCH_NAMESPACE, ",".join(ids)))
        body = '{"events":[' + ",".join(b for _, b in events) + "]}"
        response = self._post(self.batch_endpoint, body, key)
        if isinstance(response, Result):
            return response, {}
        overall = classify(response.status_code, response.headers.get("Retry-After"), response.text)
        per_event: dict[str, Result] = {}
        if overall.outcome == "delivered":
            try:
                results = json.loads(response.text).get("results")
            except (ValueError, AttributeError):
                results = None
            if isinstance(results, list):
                for item in results:
                    if isinstance(item, dict) and isinstance(item.get("event_id"), str):
                        status = item.get("status")
                        status = status if isinstance(status, int) else 200
                        per_event[item["event_id"]] = classify(
                            status, None, str(item.get("error", ""))
                        )
        return overall, per_event
