"""Turning limits on: from ``CMDRDATA_LIMITS_FILE`` at start-up, or :func:`set_limits` in code.

Configuration never crashes the app: a limits file that cannot be used is one
error line (file, line, key) and the app runs with no limits. Limits given in
code win over the file.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..telemetry.logging import logger, register_secret
from . import rules as R
from .counters import DEFAULT_INTERVAL, CounterCache, Store
from .engine import Engine

if TYPE_CHECKING:
    from ..config import Settings

FILE_ENV = "CMDRDATA_LIMITS_FILE"
REDIS_ENV = "CMDRDATA_LIMITS_REDIS_URL"
INTERVAL_ENV = "CMDRDATA_LIMITS_SYNC_INTERVAL"
MIN_INTERVAL, MAX_INTERVAL = 0.01, 60.0

_lock = threading.Lock()
_from_code = False
_exit_registered = False


def _setting(settings: Settings | None, name: str, env: str) -> str | None:
    """A limits setting: the Settings field once config.py has it, else its variable."""
    value = getattr(settings, name, None) if settings is not None else None
    if value is None:
        value = os.environ.get(env)
    text = str(value).strip() if value is not None else ""
    return text or None


def _interval(settings: Settings | None) -> float:
    text = _setting(settings, "limits_sync_interval", INTERVAL_ENV)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        logger.warning(
            "cmdrdata: %s=%r is not a number from %g to %g; using the default %g",
            INTERVAL_ENV,
            text,
            MIN_INTERVAL,
            MAX_INTERVAL,
            DEFAULT_INTERVAL,
        )
        return DEFAULT_INTERVAL
    return value


def open_store(settings: Settings | None) -> Store:
    """Redis when ``CMDRDATA_LIMITS_REDIS_URL`` is set, else SQLite in the spool folder."""
    from ..paths import spool_dir
    from .local_store import FILE_NAME, LocalStore

    url = _setting(settings, "limits_redis_url", REDIS_ENV)
    if url:
        register_secret(url)
        try:
            from .redis_store import RedisStore

            return RedisStore(url)
        except ImportError:
            reason = "needs the redis package: pip install 'cmdrdata-autotrack[redis]'"
        except Exception as exc:  # a URL redis-py refuses
            reason = f"is not usable ({type(exc).__name__}: {exc})"
        logger.error("cmdrdata: %s %s; limits are counted on this machine only", REDIS_ENV, reason)
    configured = getattr(settings, "spool_dir", None) if settings is not None else None
    return LocalStore(
        Path(spool_dir(configured or os.environ.get("CMDRDATA_SPOOL_DIR"))) / FILE_NAME
    )


def _install(rules: R.Rules | None, settings: Settings | None) -> None:
    """Make ``rules`` the process's limits (``None`` or empty: no limits)."""
    from .. import limits

    global _exit_registered
    old = limits.ENGINE
    if rules is None or rules.empty:
        limits.ENGINE = None
        if old is not None:
            old.close()
        return
    if old is not None:
        old.replace_rules(rules)
        return
    store = open_store(settings)
    limits.ENGINE = Engine(rules, CounterCache(store, _interval(settings)))
    logger.info(
        "cmdrdata: limits from %s (%s); counters in %s", rules.source, rules.summary(), store.name
    )
    if not _exit_registered:
        _exit_registered = True
        atexit.register(_at_exit)


def sync_at_exit() -> None:
    """Add what this process counted since the last sync to the store (exit, SIGTERM)."""
    from .. import limits

    engine = limits.ENGINE
    if engine is not None and engine.counters.healthy:  # a store that is down: not again
        try:
            engine.flush()
        except Exception:
            logger.debug("cmdrdata: limits counters not synced at exit", exc_info=True)


def _at_exit() -> None:
    from .. import limits

    engine = limits.ENGINE
    if engine is not None:
        try:
            engine.close()
        except Exception:
            logger.debug("cmdrdata: limits counters not synced at exit", exc_info=True)


def configure(settings: Settings | None = None) -> None:
    """At the agent's start: the limits file, unless :func:`set_limits` already decided."""
    path = _setting(settings, "limits_file", FILE_ENV)
    with _lock:
        if _from_code or path is None:
            return
        try:
            rules = R.load_file(os.path.expanduser(path))
        except R.LimitsError as exc:
            logger.error("cmdrdata: limits not applied: %s; the app runs with no limits", exc)
            return
        try:
            _install(rules, settings)
        except Exception:
            logger.exception("cmdrdata: limits not applied; the app runs with no limits")


def set_limits(
    limits: Mapping[str, Any] | None = None,
    *,
    file: str | os.PathLike[str] | None = None,
) -> bool:
    """Set the limits from code: a mapping shaped like the limits file, or a file.

    ``set_limits({"customers": {"acme": {"tokens_per_minute": 10_000, "action": "block"}}})``.
    ``set_limits(None)`` removes every limit. Limits set here win over
    ``CMDRDATA_LIMITS_FILE``. Never raises: invalid limits are logged (one line
    naming the key) and ignored, and ``False`` is returned; the limits in force stay.
    """
    global _from_code
    try:
        if file is not None:
            rules: R.Rules | None = R.load_file(os.fspath(file))
        elif limits is None:
            rules = None
        else:
            rules = R.from_mapping(limits)
    except R.LimitsError as exc:
        logger.error("cmdrdata: limits not applied: %s; the limits in force stay", exc)
        return False
    try:
        from .. import agent

        running = agent.get()
        with _lock:
            _install(rules, running.settings if running is not None else None)
            _from_code = True
    except Exception:
        logger.exception("cmdrdata: limits not applied; the limits in force stay")
        return False
    return True
