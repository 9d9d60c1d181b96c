"""HTTP delivery to cmdrdata's events API (``requests``, pooled keep-alive connections).

Each answer is classified for the sender: delivered, retry later (408, 429, 5xx,
connection errors and timeouts, honouring ``Retry-After``), refused for good
(other 4xx: that event goes to the dead letters), or a set-up problem (401/403:
the key is refused; 404/405: the endpoint is wrong; 3xx: the endpoint redirects,
and redirects are never followed): events stay spooled until it is fixed.

The tracker key goes only to the configured endpoints, over https or plain http
to loopback, never through a redirect or (for plain http) a proxy. Whatever an
answer carries back is redacted before it becomes a reason that is logged,
stored in the spool or printed (see docs/security.md).

One client serves all of a process's sender threads: one ``requests`` session
with a pool of keep-alive connections, set up once. The environment (proxies,
``NO_PROXY``, a CA bundle) is read when it is made, not at every request, and
``~/.netrc`` never (the key is the session's auth).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urljoin, urlsplit

from .. import tunables
from .._version import __version__
from ..telemetry.logging import redact, register_secret
from .backoff import retry_after_seconds

if TYPE_CHECKING:
    import requests

Outcome = Literal["delivered", "retry", "refused", "unauthorized", "misconfigured"]
RETRYABLE = frozenset({408, 425, 429})
CONNECT_TIMEOUT = 3.05
BATCH_NAMESPACE = uuid.UUID("6a0d1f3c-2b4e-4f7a-8c9d-0e1f2a3b4c5d")
REASON_CHARS = 300  # of a response body kept in a reason (dead letters, logs)
DELIVERED_STATUSES = frozenset({200, 201, 202, 204})  # per-event results that need no Result
_REDACT_WINDOW = 8192  # redact this much before cutting, so no key is cut in half unmasked


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    status: int | None = None
    retry_after: float | None = None
    reason: str = ""


# --- which URLs may receive the key -----------------------------------------------------------
#
# Two parsers read the endpoint: this check (urllib.parse) and the HTTP client (urllib3,
# through requests). Where they can disagree (userinfo, backslashes, whitespace, non-ASCII,
# odd IP spellings) the URL is refused, so the host checked is the host connected to. The
# grammar below is a strict subset of RFC 3986 that both read alike; DeliveryClient checks
# again with the client's own parser before it sends anything.

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)")
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")
_AUTHORITY = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")
_PATH = re.compile(r"(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})*)*")
_LOOPBACK = "written localhost, 127.x.x.x in full or [::1])"


ENDPOINT = "endpoint"
BATCH_ENDPOINT = "batch endpoint (CMDRDATA_BATCH_ENDPOINT)"


def endpoint_problem(url: str, name: str = ENDPOINT) -> str | None:
    """Why ``url`` may not receive the tracker key (https only, plain http to loopback only;
    one unambiguous host), or ``None``. ``name`` says which setting it is, in the message."""
    shown = f"{name} {_shown(url)}"
    if not url:
        return f"{name} is empty"
    if not url.isascii() or any(c.isspace() or not c.isprintable() or c == "\\" for c in url):
        return (
            f"{shown} has a space, a control character, a backslash or a non-ASCII character "
            "(write an international host name in its xn-- form)"
        )
    match = _URL.fullmatch(url)
    if match is None:
        return f"{shown} is not a URL (expected https://host/path)"
    scheme, authority, rest = match["scheme"].lower(), match["authority"], match["rest"]
    if scheme not in ("http", "https"):
        return f"{shown} must be an https URL"
    if "@" in authority:
        return f"{shown} must not hold credentials (user:password@): the key is sent in a header"
    parts = _AUTHORITY.fullmatch(authority)
    if parts is None or not _valid_host(parts["host"]):
        return f"{shown} has no valid host[:port]"
    if parts["port"] is not None and not 0 < int(parts["port"]) < 65536:
        return f"{shown} has a port outside 1-65535"
    if "?" in rest or "#" in rest:
        return f"{shown} must not have a query or a fragment"
    if not _PATH.fullmatch(rest):
        return f"{shown} has characters in its path that must be percent-encoded"
    if scheme == "http" and not _is_loopback(parts["host"]):
        host = parts["host"].lower()
        if host.startswith("localhost") or host[:1].isdigit():  # a loopback in disguise?
            return f"{shown} must use https (plain http is allowed on loopback only, {_LOOPBACK}"
        return f"{shown} must use https (plain http is allowed on loopback only)"
    return None


def batch_url(endpoint: str, batch_endpoint: str | None) -> str:
    """The batch endpoint that will be used: the one configured, or the endpoint + ``/batch``."""
    return batch_endpoint or endpoint.rstrip("/") + "/batch"


def endpoints_problem(endpoint: str, batch_endpoint: str | None) -> str | None:
    """:func:`endpoint_problem` for both URLs the key is sent to, or ``None``."""
    return endpoint_problem(endpoint) or (
        endpoint_problem(batch_endpoint, BATCH_ENDPOINT) if batch_endpoint else None
    )


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    labels = host.split(".")
    return len(host) <= 253 and all(_HOST_NAME.fullmatch(label) for label in labels)


def _is_loopback(host: str) -> bool:
    host = host.lower()
    if host == "localhost":
        return True
    try:
        # canonical spellings only: 127.1 or 0x7f.0.0.1 mean loopback to some resolvers only
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_USERINFO = re.compile(r"(?<=://)[^/?#]*@")


def _shown(url: object, limit: int = 120) -> str:
    """``url`` fit for a message: credentials masked, escaped, redacted, not too long."""
    text = _USERINFO.sub("***@", str(url))
    text = text if len(text) <= limit else text[:limit] + "…"
    return redact(repr(text))


def _client_problem(url: str, name: str) -> str | None:
    """The check again, with the parser ``requests`` and urllib3 connect with (imported here,
    on the sender thread: never on the app's start-up path)."""
    import requests
    from urllib3.util import parse_url

    try:
        prepared = requests.Request("POST", url).prepare().url or ""
        theirs = parse_url(prepared)
        ours = urlsplit(url)
        ours_port = ours.port
    except (ValueError, requests.RequestException):
        return f"{name} {_shown(url)} is not a URL the HTTP client accepts"
    if theirs.auth is not None or (
        (theirs.scheme or "").lower(),
        (theirs.host or "").strip("[]").lower(),
        theirs.port,
    ) != (ours.scheme.lower(), ours.hostname or "", ours_port):
        return f"{name} {_shown(url)} names another host to the HTTP client; key not sent"
    return None


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


def classify(
    status: int, retry_after: str | None, body: str, location: str | None = None, url: str = ""
) -> Result:
    """What an answer means for its events. ``body`` may echo anything the server saw,
    the key included: only a redacted, printable extract of it is kept in the reason."""
    if 200 <= status < 300:
        return Result("delivered", status)
    if status in RETRYABLE or status >= 500:
        return Result("retry", status, retry_after_seconds(retry_after), f"HTTP {status}")
    if status in (401, 403):
        return Result("unauthorized", status, None, f"HTTP {status}: the tracker key was refused")
    if status in (404, 405):
        return Result("misconfigured", status, None, f"HTTP {status}: is CMDRDATA_ENDPOINT right?")
    if 300 <= status < 400:
        return Result(
            "misconfigured",
            status,
            None,
            f"HTTP {status}: the events API redirects to {_where(location, url)}; redirects are "
            "not followed (set CMDRDATA_ENDPOINT, or CMDRDATA_BATCH_ENDPOINT, to the final URL)",
        )
    return Result("refused", status, None, f"HTTP {status}: {safe_extract(body)}")


def safe_extract(text: str, limit: int = REASON_CHARS) -> str:
    """The start of ``text`` with secrets masked and control characters spaced out."""
    clean = redact(text[:_REDACT_WINDOW])
    clean = "".join(c if c.isprintable() else " " for c in clean)
    return clean if len(clean) <= limit else clean[:limit] + "…"


def _where(location: str | None, base: str) -> str:
    """The scheme, host and port a redirect points to: no credentials, path or query."""
    if not location:
        return "an unnamed location"
    try:
        parts = urlsplit(urljoin(base, location.strip()))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "an invalid location"
    if ":" in host:
        host = f"[{host}]"
    return safe_extract(f"{parts.scheme}://{host}{port}", 120)


class DeliveryClient:
    """Posts events with the tracker key, to the two configured URLs only, never redirected.

    Thread-safe for posting: the sender threads of a process share one client."""

    def __init__(
        self,
        endpoint: str,
        batch_endpoint: str | None,
        api_key: str,
        timeout: float,
        connections: int | None = None,
    ) -> None:
        import requests  # here, on the sender thread: never on the app's start-up path
        from requests.adapters import HTTPAdapter

        register_secret(api_key)  # whatever echoes it back, logs and reasons mask it
        self._requests = requests
        self.endpoint = endpoint
        self.batch_endpoint = batch_url(endpoint, batch_endpoint)
        # refuse to send to a URL that fails the check, whoever built this client
        self._problems = {
            url: endpoint_problem(url, name) or _client_problem(url, name)
            for url, name in (
                (self.endpoint, ENDPOINT),
                (self.batch_endpoint, BATCH_ENDPOINT),
            )
        }
        self.timeout = (CONNECT_TIMEOUT, timeout)
        self.session = _unredirectable_session()
        # the environment, read once: the proxies each URL may use (plain http goes to
        # loopback only, so never through an HTTP(S)_PROXY / ALL_PROXY, which would read
        # the key in clear; https may use one: it only tunnels TLS), and a CA bundle
        self._proxies = {url: _proxies_for(url) for url in (self.endpoint, self.batch_endpoint)}
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.session.verify = bundle
        self.session.trust_env = False  # nothing more from the environment, nor ~/.netrc
        self._templates: dict[str, requests.PreparedRequest] = {}
        size = max(1, connections or tunables.MAX_CONNECTIONS)
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # the key as the session's auth, not a default header: requests then never
        # replaces it with ~/.netrc credentials (which would go to the events host)
        self.session.auth = _BearerAuth(api_key)
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "User-Agent": f"cmdrdata-autotrack/{__version__}",
            }
        )

    def close(self) -> None:
        self.session.close()

    def _post(self, url: str, body: str, key: str) -> requests.Response | Result:
        problem = self._problems.get(url)
        if problem:
            return Result("misconfigured", None, None, problem)
        requests = self._requests
        try:
            # the request as the session prepares it (URL, headers, the key), made once per
            # URL and copied: only the body and the idempotency key differ between requests
            template = self._templates.get(url)
            if template is None:
                template = self._templates[url] = self.session.prepare_request(
                    requests.Request("POST", url)
                )
            request = template.copy()
            request.headers["Idempotency-Key"] = key
            request.prepare_body(body.encode(), None)
            return self.session.send(
                request,
                timeout=self.timeout,
                allow_redirects=False,  # a 3xx is classified, never followed
                proxies=self._proxies.get(url, _NO_PROXY),  # type: ignore[arg-type]  # None: none
                verify=self.session.verify,
                cert=None,
                stream=False,
            )
        except requests.Timeout:
            return Result("retry", None, None, "timed out")
        except requests.RequestException as exc:
            # the type only: an exception's text can carry URLs and headers
            return Result("retry", None, None, f"connection failed: {type(exc).__name__}")

    def _classify(self, response: requests.Response, url: str) -> Result:
        status = response.status_code
        return classify(
            status,
            response.headers.get("Retry-After"),
            response.text if _quoted(status) else "",  # decoded only when a reason quotes it
            response.headers.get("Location"),
            url,
        )

    def send_one(self, event_id: str, body: str) -> Result:
        response = self._post(self.endpoint, body, event_id)
        if isinstance(response, Result):
            return response
        return self._classify(response, self.endpoint)

    def send_batch(self, events: Sequence[tuple[str, str]]) -> tuple[Result, dict[str, Result]]:
        """Post several events; returns the request's result and, when the answer lists
        them, the results of the events that were not delivered (a missing one was)."""
        key = batch_key(event_id for event_id, _ in events)
        body = '{"events":[' + ",".join(b for _, b in events) + "]}"
        response = self._post(self.batch_endpoint, body, key)
        if isinstance(response, Result):
            return response, {}
        overall = self._classify(response, self.batch_endpoint)
        per_event: dict[str, Result] = {}
        if overall.outcome == "delivered":
            try:
                results = json.loads(response.content).get("results")
            except (ValueError, AttributeError):
                results = None
            if isinstance(results, list):
                for item in results:
                    if not isinstance(item, dict):
                        continue
                    event_id, status = item.get("event_id"), item.get("status")
                    if not isinstance(event_id, str) or status in DELIVERED_STATUSES:
                        continue
                    status = status if isinstance(status, int) else 200
                    result = classify(status, None, str(item.get("error", "")))
                    if result.outcome != "delivered":
                        per_event[event_id] = result
        return overall, per_event


def batch_key(event_ids: Iterable[str]) -> str:
    """A batch request's ``Idempotency-Key``: the same for the same set of events."""
    return str(uuid.uuid5(BATCH_NAMESPACE, ",".join(sorted(event_ids))))


_NO_PROXY: dict[str, str | None] = {"http": None, "https": None, "all": None}


def _proxies_for(url: str) -> dict[str, str | None]:
    """The proxies ``url`` may go through, from the environment (read now, once)."""
    if url[:6].lower() != "https:":
        return dict(_NO_PROXY)
    from requests.utils import get_environ_proxies

    try:
        found = get_environ_proxies(url)
    except (ValueError, OSError):  # an odd URL or NO_PROXY: no proxy rather than a crash
        return dict(_NO_PROXY)
    return {**_NO_PROXY, **{k: v for k, v in found.items() if isinstance(v, str)}}


def _quoted(status: int) -> bool:
    """Whether the reason for ``status`` quotes the answer (a refused event)."""
    return not (200 <= status < 400 or status in RETRYABLE or status >= 500) and status not in (
        401,
        403,
        404,
        405,
    )


def _unredirectable_session() -> requests.Session:
    """A session that sees no redirect target in any answer, so it cannot follow one even
    if asked to (``max_redirects = 0`` would instead fail every 3xx with TooManyRedirects)."""
    import requests

    class UnredirectableSession(requests.Session):
        def get_redirect_target(self, resp: requests.Response) -> None:
            return None

    return UnredirectableSession()


class _BearerAuth:
    """Sets ``Authorization: Bearer <key>`` on each request (a requests auth callable)."""

    def __init__(self, key: str) -> None:
        self._header = f"Bearer {key}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<redacted>)"
