"""Direct calls: ``client.post("/chat/completions", ...)`` and friends, without a patched method.

The SDK's ``_process_response`` sees every HTTP response. When no patched method is
active in the context, the request's method and path (after the client's base URL;
Azure's ``/deployments/{name}`` prefix removed) are looked up in the endpoint rows'
routes:

* a known billable path is metered as its endpoint: the span opens from the response
  (its start set back by the response's elapsed time when httpx knows it), streamed
  bodies are observed as they are read, and attribution comes from the context
  (``customer_context``, baggage, ``CMDRDATA_CUSTOMER_ID``);
* a ``POST`` to a path outside OpenAI's own API (``/rerank`` of a compatible host...)
  whose JSON body (already read) has a ``usage`` object is metered generically, tokens
  only (metric ``calls_metered_generic``); one whose body is streamed cannot be looked at
  without reading it for the caller: it is counted (``calls_unmetered_generic_stream``);
* a ``POST`` under OpenAI's own API that no row routes (``/responses/{id}/cancel``, a
  batch, a run) is not metered here (its usage belongs to another call or surface);
  when its answer carries usage it is counted (``calls_unmetered_with_usage``).
* ``GET`` and the other methods read stored objects: never metered.

A stream asked for directly (``client.post(..., stream=True, stream_cls=...)``) is
observed like any stream, but the agent cannot add ``stream_options.include_usage`` to
a request already sent: without it the stream's tokens are estimated (and flagged).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ...attribution.resolve import resolve
from ...telemetry import metrics
from ...telemetry.logging import warn_once
from . import deferred
from . import request as R
from .endpoints import GENERIC, OPENAI_ROOTS, ROUTES, Endpoint

if TYPE_CHECKING:
    from .call import MeteredCall
    from .wrappers import Runtime

_DEPLOYMENTS = "/deployments/"


def relative_path(base_path: str, path: str) -> str:
    """``path`` after the client's base path, without Azure's deployment prefix."""
    base = base_path.rstrip("/")
    if base and path.startswith(base + "/"):
        path = path[len(base) :]
    if path.startswith(_DEPLOYMENTS):  # Azure: /deployments/{deployment}/chat/completions
        rest = path[len(_DEPLOYMENTS) :]
        cut = rest.find("/")
        path = rest[cut:] if cut >= 0 else "/"
    return path.rstrip("/") or "/"


def _elapsed_ns(response: Any) -> int:
    """How long the request took until its response, when httpx knows it (a read body)."""
    try:
        return int(response.elapsed.total_seconds() * 1e9)
    except Exception:  # a streamed body: httpx knows it only once the body is closed
        return 0


def begin(
    runtime: Runtime, client: Any, hook: dict[str, Any], is_async: bool = False
) -> MeteredCall | None:
    """The metering of a direct call's response, or ``None`` (not billable, or done already)."""
    response = hook.get("response")
    request = getattr(response, "request", None)
    if request is None:
        return None
    method = request.method
    path = relative_path(str(client.base_url.path), request.url.path)
    if deferred.route(method, path) is not None:  # usage that comes later
        return deferred.begin(runtime, client, hook, path, is_async)
    endpoint = ROUTES.get((method, path))
    if endpoint is None:
        if method == "POST":
            _meter_generic(runtime, client, response, hook, path)
        return None
    metrics.increment("calls_metered_direct")
    return _begin(runtime, endpoint, client, response, hook)


def _begin(
    runtime: Runtime, endpoint: Endpoint, client: Any, response: Any, hook: dict[str, Any]
) -> MeteredCall:
    kwargs = R.direct_kwargs(hook.get("options"))
    attribution = resolve(None, None, runtime.settings.customer_id)
    return runtime.begin(
        endpoint, client, kwargs, attribution, direct=True, elapsed_ns=_elapsed_ns(response)
    )


def _meter_generic(
    runtime: Runtime, client: Any, response: Any, hook: dict[str, Any], path: str
) -> None:
    """A POST no row routes: metered (tokens only) if it is not OpenAI's and reports usage."""
    content_type = response.headers.get("content-type", "")
    is_json = "json" in content_type
    if not is_json and "event-stream" not in content_type:
        return
    openai_path = path.split("/", 2)[1] in OPENAI_ROOTS
    try:
        body = response.content
    except Exception:  # not read yet (a streamed body): reading it is the caller's business
        if not openai_path:
            metrics.increment("calls_unmetered_generic_stream")
            warn_once(
                "direct-stream:" + path,
                "cmdrdata: a streamed response of %s (not a known billable endpoint) is not "
                "metered; counted in calls_unmetered_generic_stream",
                path,
            )
        return
    if not is_json or b'"usage"' not in body:
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return
    usage, info = GENERIC.extractor(parsed)
    if usage is None or usage.is_empty():
        return
    if openai_path:
        metrics.increment("calls_unmetered_with_usage")
        warn_once(
            "direct-unrouted:" + "/".join(path.split("/", 3)[:3]),
            "cmdrdata: a direct call to %s reported usage but is not a billable call the "
            "agent meters (a retrieval, a cancel...); counted in calls_unmetered_with_usage",
            path,
        )
        return
    call = _begin(runtime, GENERIC, client, response, hook)
    call.span.set_attribute("url.path", path[:256])
    call.on_http_response(response, hook.get("retries_taken"), is_async=False)
    metrics.increment("calls_metered_generic")
    call.finish(call.settle_usage(usage), info)
