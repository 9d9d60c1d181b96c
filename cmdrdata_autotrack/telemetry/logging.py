"""The agent's logger: one namespace, rate-limited warnings, secrets never printed.

Every logger of the agent is a child of ``cmdrdata_autotrack``. A redacting
filter on that logger's handler masks anything that looks like a key or an
``Authorization`` header, whatever the level.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any

ROOT = "cmdrdata_autotrack"
logger = logging.getLogger(ROOT)

_SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"\b(sk|tk|rk)-[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
)


def redact(text: str) -> str:
    """Mask keys and authorization values in ``text``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + "[REDACTED]", text)
        else:
            text = pattern.sub("[REDACTED]", text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets masked, before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


_configured = False
_config_lock = threading.Lock()


def configure(level: str = "warning") -> None:
    """Give the agent's logger a stderr handler (once), at ``level``, redacted."""
    global _configured
    with _config_lock:
        logger.setLevel(level.upper())
        if _configured:
            return
        _configured = True
        logger.addFilter(RedactingFilter())
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("cmdrdata-autotrack %(levelname)s %(message)s"))
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
        logger.propagate = False


_warned: set[str] = set()
_MAX_WARNED = 1024


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log a warning the first time ``key`` is seen (bounded memory)."""
    if key in _warned:
        return
    if len(_warned) < _MAX_WARNED:
        _warned.add(key)
    logger.warning(message, *args)


def error_once(key: str, message: str, *args: Any) -> None:
    """Log an internal error with its traceback the first time ``key`` is seen."""
    if key in _warned:
        return
    if len(_warned) < _MAX_WARNED:
        _warned.add(key)
    logger.error(message, *args, exc_info=True)
