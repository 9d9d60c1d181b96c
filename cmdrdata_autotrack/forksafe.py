"""After-fork handling in one place.

A forked child (gunicorn, Celery, multiprocessing) inherits a copy of every lock
the agent holds, possibly held by a thread that does not exist in the child,
and descriptors, connections and thread handles that are the parent's. Each
part of the agent that owns such things registers one hook here; the hooks run
in the child, in registration order (module-level state registers at import,
before the objects that use it), before the child runs any code of its own.

Hooks of objects are held weakly: registering does not keep a pipeline alive.
A hook that fails is counted and skipped; the others still run.

Before the fork, imports of the agent's own modules and dependencies that another
thread has under way are given a moment to finish (:func:`finish_imports`, bounded):
the agent's threads import some lazily (``requests`` when the first sender starts),
and a module a thread was importing at the fork stays locked in the child for good,
so the child's own first import of it would never return.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import MethodType

Hook = Callable[[], None]

_lock = threading.Lock()
_hooks: list[Callable[[], Hook | None]] = []  # each returns the hook, or None once collected
failures = 0


def register(hook: Hook) -> None:
    """Run ``hook()`` in every child forked from now on (bound methods held weakly)."""
    ref: Callable[[], Hook | None]
    if isinstance(hook, MethodType):
        ref = weakref.WeakMethod(hook)
    else:

        def ref() -> Hook:
            return hook

    with _lock:
        _hooks.append(ref)


def unregister(hook: Hook) -> None:
    with _lock:
        _hooks[:] = [ref for ref in _hooks if ref() not in (hook, None)]


def run_child_hooks() -> None:
    """What the child runs right after ``fork`` (tests call it to simulate one)."""
    global _lock, failures
    _lock = threading.Lock()  # the parent's may have been held by another of its threads
    for ref in list(_hooks):
        hook = ref()
        if hook is None:
            continue
        try:
            hook()
        except Exception:
            failures += 1  # nothing to log with safely here: the logging locks are suspect too
    _hooks[:] = [ref for ref in _hooks if ref() is not None]


def hook_count() -> int:
    return sum(1 for ref in _hooks if ref() is not None)


# Top-level packages the agent's threads import (its own, and what delivery, tracing and
# the fleet ledger load lazily). Another thread's import of anything else is the app's.
LAZY_IMPORTS = frozenset(
    {
        "cmdrdata_autotrack",
        "requests",
        "urllib3",
        "idna",
        "charset_normalizer",
        "chardet",
        "certifi",
        "opentelemetry",
        "psycopg",
        "psycopg_binary",
        "redis",
        "sqlite3",
    }
)


FINISH_IMPORTS_S = 2.0  # the longest a fork waits for them: a fork is never held up for good
_watching = False


def finish_imports() -> None:
    """Before ``fork``: let the imports of the agent's modules another thread has under way
    finish, within :data:`FINISH_IMPORTS_S`, so the child does not inherit them half done.

    It only waits (polling, the GIL released), never takes an import lock: whatever the
    importing thread waits for, the fork goes on by the deadline, as it would without it.
    Never raises.
    """
    deadline = time.monotonic() + FINISH_IMPORTS_S
    try:
        while _importing() and time.monotonic() < deadline:
            time.sleep(0.002)
    except Exception:
        return


def _importing() -> bool:
    return any(
        name.partition(".")[0] in LAZY_IMPORTS
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
    )


def watch_imports() -> None:
    """Make forks wait for the agent's imports under way (see :func:`finish_imports`).

    Called when the agent's threads start, so that the hook is registered after those of
    ``logging`` and ``concurrent.futures``, and so runs before them (fork hooks run
    last-registered first): it never waits while a lock the import may need is held.
    """
    global _watching
    with _lock:
        if _watching or not hasattr(os, "register_at_fork"):
            return
        _watching = True
    os.register_at_fork(before=finish_imports)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=run_child_hooks)
