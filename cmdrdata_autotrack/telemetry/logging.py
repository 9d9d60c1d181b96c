"""The agent's logger: one namespace, rate-limited warnings, secrets never printed.

Every logger of the agent is a child of ``cmdrdata_autotrack``. A redacting
filter on that logger's handler masks anything that looks like a key or an
``Authorization`` header, whatever the level.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
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


class RedactingFormatter(logging.Formatter):
    """Text lines; the event and trace ids of a record are appended; secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if hasattr(record, k))
        return redact(f"{line} {ids}" if ids else line)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, event/trace ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in CONTEXT_KEYS:
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str))


JsonFormatter.converter = time.gmtime
CONTEXT_KEYS = ("event_id", "trace_id", "request_id")

_configured = False
_config_lock = threading.Lock()
_handler: logging.Handler | None = None


def configure(level: str = "warning", fmt: str = "text") -> None:
    """Give the agent's loggers one stderr handler, at ``level``, in ``fmt``, redacted."""
    global _configured, _handler
    with _config_lock:
        try:
            logger.setLevel(level.upper())
        except (ValueError, TypeError):
            logger.setLevel(logging.WARNING)
        if not _configured:
            _configured = True
            _handler = logging.StreamHandler(sys.stderr)
            _handler.addFilter(RedactingFilter())
            logger.addHandler(_handler)
            logger.propagate = False
        assert _handler is not None
        _handler.setFormatter(
            JsonFormatter()
            if fmt == "json"
            else RedactingFormatter("cmdrdata-autotrack %(levelname)s %(message)s")
        )
        # the one redacting filter, on every logger of the agent's
        redacting = RedactingFilter()
        for name, child in list(logging.root.manager.loggerDict.items()):
            ours = name == ROOT or name.startswith(ROOT + ".")
            if (
                ours
                and isinstance(child, logging.Logger)
                and not any(isinstance(f, RedactingFilter) for f in child.filters)
            ):
                child.addFilter(redacting)


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
    logger.error(message, *args, exc_info=sys.exc_info()[0] is not None)
