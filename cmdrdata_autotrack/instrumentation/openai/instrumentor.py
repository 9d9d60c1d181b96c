"""Patch the ``openai`` SDK's resource classes when (and only when) their modules are imported.

Post-import hooks fire for each resource module as the SDK loads it (lazily
since openai 1.78), so the agent adds nothing to start-up and never imports
``openai`` itself. Classes, not instances, are patched: every client is covered,
whenever it was made. :func:`uninstrument` puts the original functions back.

Each patched method gets a small wrapper that hands the call to the real one
(:mod:`.wrappers`), built with the agent's runtime at its first call. So the
classes can be patched as soon as ``openai`` is imported, before the agent has
finished starting (:func:`instrument_deferred`: the bootstrap starts it in the
background); a call that comes first waits for that start, and none is missed.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

import wrapt

from ...telemetry.logging import error_once, logger, warn_once
from .endpoints import (
    BASE_CLIENT_MODULE,
    ENDPOINTS,
    PROCESS_RESPONSE,
    SUPPORTED_MAX_EXCLUSIVE,
    SUPPORTED_MIN,
    Endpoint,
    all_modules,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .wrappers import Runtime, Wrapper

    Starter = Callable[[], "Runtime | None"]

_lock = threading.RLock()
_runtime: Runtime | None = None
_starter: Starter | None = None  # the agent's start, for a call that comes before it is done
_hooks_registered = False
_patched: list[tuple[type, str, Any]] = []  # (class, attribute, original)
_MARK = "_self_cmdrdata_autotrack"  # wrapt keeps _self_* on the proxy itself


def parse_version(text: str) -> tuple[int, int]:
    parts = ([*text.split("."), "0"])[:2]
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except ValueError:
        return (0, 0)


def sdk_supported() -> bool:
    """Whether the installed ``openai`` (already being imported) is in the supported range."""
    version_module = sys.modules.get("openai._version") or sys.modules.get("openai.version")
    text = getattr(version_module, "__version__", None) or getattr(version_module, "VERSION", "")
    version = parse_version(str(text))
    if SUPPORTED_MIN <= version < SUPPORTED_MAX_EXCLUSIVE:
        return True
    warn_once(
        "sdk-version",
        "openai %s is outside the supported range (>=%d.%d, <%d); it is left uninstrumented",
        text or "(unknown version)",
        *SUPPORTED_MIN,
        SUPPORTED_MAX_EXCLUSIVE[0],
    )
    return False


def _wrap(cls: type, name: str, wrapper: Any) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, _MARK, False):
        return
    wrapped = wrapt.FunctionWrapper(original, wrapper)
    setattr(wrapped, _MARK, True)
    setattr(cls, name, wrapped)
    _patched.append((cls, name, original))


def _runtime_now() -> Runtime | None:
    """The running agent's runtime; if it is still starting, after waiting for the start."""
    runtime = _runtime
    if runtime is None:
        starter = _starter
        if starter is not None:
            runtime = starter()
    return runtime


def _deferred(build: Callable[[Runtime], Wrapper]) -> Wrapper:
    """A wrapper that hands each call to ``build(runtime)``, built at the first call.

    Without a runtime (the agent could not start, or was uninstrumented) the call goes
    to the SDK untouched.
    """
    built: tuple[Runtime | None, Wrapper | None] = (None, None)

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        nonlocal built
        runtime = _runtime or _runtime_now()
        if runtime is None:
            return wrapped(*args, **kwargs)
        owner, real = built
        if owner is not runtime or real is None:
            real = build(runtime)
            built = (runtime, real)  # one assignment: a racing call builds its own, same thing
        return real(wrapped, instance, args, kwargs)

    return wrapper


def _response_hook(is_async: bool) -> Wrapper:
    def build(runtime: Runtime) -> Wrapper:
        from .wrappers import process_response_hook

        return process_response_hook(is_async=is_async, runtime=runtime)

    return _deferred(build)


def _call(endpoint: Endpoint, is_async: bool) -> Wrapper:
    def build(runtime: Runtime) -> Wrapper:
        from .wrappers import call_wrapper, stream_helper_wrapper

        if endpoint.role == "stream_helper":
            return stream_helper_wrapper(runtime, endpoint)
        return call_wrapper(runtime, endpoint, is_async=is_async)

    return _deferred(build)


def _patch_module(module: ModuleType) -> None:
    with _lock:
        if _runtime is None and _starter is None:
            return
        try:
            if not sdk_supported():
                return
            name = module.__name__
            if name == BASE_CLIENT_MODULE:
                for index, (cls_name, method) in enumerate(PROCESS_RESPONSE):
                    cls = getattr(module, cls_name, None)
                    if isinstance(cls, type):
                        _wrap(cls, method, _response_hook(is_async=index == 1))
                return
            for endpoint in ENDPOINTS:
                if name not in endpoint.modules:
                    continue
                for index, cls_name in enumerate(endpoint.classes):
                    cls = getattr(module, cls_name, None)
                    if not isinstance(cls, type) or endpoint.method not in cls.__dict__:
                        continue
                    # Metering on or off is decided per call, so it can change at run time;
                    # off, the wrappers only take the agent's keyword arguments out.
                    _wrap(cls, endpoint.method, _call(endpoint, is_async=index == 1))
            logger.debug("instrumented %s", name)
        except Exception:
            error_once(
                "patch:" + module.__name__, "cmdrdata: could not instrument %s", module.__name__
            )


def instrument(runtime: Runtime) -> None:
    """Patch the SDK now for modules already imported, and later for the rest."""
    global _runtime
    with _lock:
        _runtime = runtime
        _register_or_patch()


def instrument_deferred(starter: Starter) -> None:
    """Patch the SDK now, before the agent has started: a call that comes before
    :func:`instrument` gets the runtime from ``starter()`` (which waits for the start, or
    starts the agent itself; ``None`` if it cannot)."""
    global _starter
    with _lock:
        _starter = starter
        _register_or_patch()


def _register_or_patch() -> None:
    global _hooks_registered
    if not _hooks_registered:
        _hooks_registered = True
        for name in (BASE_CLIENT_MODULE, *all_modules()):
            wrapt.register_post_import_hook(_patch_module, name)
    else:
        for name in (BASE_CLIENT_MODULE, *all_modules()):
            module = sys.modules.get(name)
            if module is not None:
                _patch_module(module)
    from . import realtime  # WebSocket sessions (Realtime, responses.connect)

    realtime.patch(_runtime_now)


def uninstrument() -> None:
    """Restore every original method; modules imported later stay unpatched."""
    global _runtime, _starter
    with _lock:
        _runtime, _starter = None, None
        while _patched:
            cls, name, original = _patched.pop()
            setattr(cls, name, original)
        from . import realtime

        realtime.unpatch()


def is_instrumented() -> bool:
    return bool(_patched)
