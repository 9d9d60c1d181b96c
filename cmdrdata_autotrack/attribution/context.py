"""The customer context: a ``contextvars`` scope naming the customer of the calls inside it.

``contextvars`` follow ``await`` and are copied into every asyncio task, so the
customer of a request handler is the customer of every OpenAI call it makes,
however deep. Threads do not inherit it: to carry it into a thread pool, submit
``contextvars.copy_context().run`` (see docs/attribution.md).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CustomerScope:
    customer_id: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict)


_CURRENT: contextvars.ContextVar[CustomerScope | None] = contextvars.ContextVar(
    "cmdrdata_customer", default=None
)


def current_scope() -> CustomerScope | None:
    return _CURRENT.get()


@contextmanager
def customer_context(customer_id: str | None, **metadata: Any) -> Iterator[CustomerScope]:
    """Attribute every OpenAI call inside the block to ``customer_id``.

    Keyword arguments become billing metadata of those calls (``plan="pro"``).
    Nested contexts override the customer and extend the metadata.
    """
    outer = _CURRENT.get()
    merged = {**outer.metadata, **metadata} if outer is not None else dict(metadata)
    scope = CustomerScope(customer_id, merged)
    token = _CURRENT.set(scope)
    try:
        yield scope
    finally:
        _CURRENT.reset(token)


def set_customer(
    customer_id: str | None, **metadata: Any
) -> contextvars.Token[CustomerScope | None]:
    """Name the customer of the current context until it ends (for framework middleware).

    Returns a token for :func:`reset_customer`; in a request-scoped context
    (ASGI, a Celery task) there is no need to reset.
    """
    return _CURRENT.set(CustomerScope(customer_id, dict(metadata)))


def reset_customer(token: contextvars.Token[CustomerScope | None]) -> None:
    _CURRENT.reset(token)


def clear_customer() -> None:
    _CURRENT.set(None)


def get_customer() -> str | None:
    scope = _CURRENT.get()
    return scope.customer_id if scope is not None else None
