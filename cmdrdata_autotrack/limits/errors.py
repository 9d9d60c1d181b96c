"""``CustomerLimitExceeded``: the exception a blocked call raises, an ``openai.RateLimitError``.

Apps already handle OpenAI's own 429s (``except openai.RateLimitError``, retry
libraries that read ``Retry-After``), so a call refused for being over a
customer's limit raises one: status 429, a JSON body, a ``retry-after`` header
(whole seconds until the window resets) and ``retry-after-ms``. It is built on
a real HTTP response object of the library the installed SDK uses (``httpx``,
or ``httpx2`` for openai 3.x), so ``exc.response.headers`` and
``exc.status_code`` work as on a real one. Nothing was sent: the request in it
is the client's base URL.
"""

from __future__ import annotations

import math
import time
from types import ModuleType
from typing import Any

import openai

from .rules import Limit

ERROR_CODE = "customer_limit_exceeded"
DEFAULT_URL = "https://api.openai.com/v1/"


def _http_module() -> ModuleType:
    """The HTTP library the installed ``openai`` builds its responses with."""
    from openai import _exceptions

    for name in ("httpx2", "httpx"):
        module = getattr(_exceptions, name, None)
        if isinstance(module, ModuleType):
            return module
    import httpx  # every openai release before 3.x

    return httpx


def _clock_time(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


class CustomerLimitExceeded(openai.RateLimitError):
    """A call refused before it was sent: its customer is over a ``block`` limit."""

    customer_id: str
    limit_name: str  # e.g. "tokens_per_minute"
    limit_value: str  # for people: "10,000 tokens per minute"
    used: str  # for people: "10,250 tokens"
    scope: str  # the limits table it comes from: default, plans.pro, customers."acme"
    resets_at: float  # Unix time the window resets
    retry_after: int  # whole seconds until then (at least 1)
    exceeded: tuple[str, ...]  # every limit the customer was over, this one included

    def __init__(
        self,
        customer_id: str,
        limit: Limit,
        used: int,
        resets_at: float,
        now: float,
        *,
        url: str | None = None,
    ) -> None:
        wait = max(0.0, resets_at - now)
        retry_after = max(1, math.ceil(wait))
        message = (
            f"cmdrdata: customer {customer_id!r} is over its limit of {limit.describe()} "
            f"({limit.amount(used)} used, from {limit.scope}); the call was not sent. "
            f"The limit resets in {retry_after} s, at {_clock_time(resets_at)}."
        )
        body: dict[str, Any] = {
            "error": {
                "message": message,
                "type": "customer_limit",
                "param": None,
                "code": ERROR_CODE,
            }
        }
        http: Any = _http_module()
        request = http.Request("POST", url or DEFAULT_URL)
        response = http.Response(
            429,
            headers={
                "retry-after": str(retry_after),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
                "x-cmdrdata-limit": limit.name,
            },
            json=body,
            request=request,
        )
        super().__init__(message, response=response, body=body["error"])  # as the SDK does
        self.customer_id = customer_id
        self.limit_name = limit.name
        self.limit_value = limit.describe()
        self.used = limit.amount(used)
        self.scope = limit.scope
        self.resets_at = resets_at
        self.retry_after = retry_after
        self.exceeded = (limit.name,)
