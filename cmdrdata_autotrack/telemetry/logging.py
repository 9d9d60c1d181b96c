"""The agent's logger: one namespace, rate-limited warnings, secrets never printed.

Every logger of the agent is a child of ``cmdrdata_autotrack``. A redacting
filter on that logger's handler masks anything that looks like a key, an
``Authorization`` header or a URL's credentials, whatever the level, and the
exact secrets the agent holds (:func:`register_secret`) in any escaped spelling.
:func:`redact` is also what reasons stored in the spool and printed by the
commands go through.
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

MASK = "[REDACTED]"
# a quote, maybe escaped once or more (JSON inside JSON): \" or \\"
_QUOTE = r"(?:\\*[\"'])?"
# a secret value (or one already masked) ends at whitespace, a quote, a separator or a
# backslash (an escaped quote)
_VALUE = r"(?:\[REDACTED\]|[^\s\"',;}\]\\]+)"
_SECRET_PATTERNS = (
    # Authorization / Proxy-Authorization: [scheme] value, as a header, JSON or a repr
    re.compile(
        rf"(?i)(authorization{_QUOTE}\s*[:=]\s*{_QUOTE})(?:[a-z][a-z0-9._~+/-]*\s+)?{_VALUE}"
    ),
    re.compile(rf"(?i)\b(bearer\s+){_VALUE}"),
    re.compile(rf"(?i)(api[_-]?key{_QUOTE}\s*[:=]\s*{_QUOTE}){_VALUE}"),
    # credentials in a URL: scheme://user:password@host
    re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@\"']*@"),
    # key-shaped words: tk-… (cmdrdata), sk-… / rk-… (OpenAI)
    re.compile(r"\b()(?:sk|tk|rk)-[A-Za-z0-9_-]{6,}"),
)
_MIN_SECRET = 6  # shorter values would mask ordinary words
_MAX_SECRETS = 32
_secrets: dict[str, re.Pattern[str]] = {}
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever :func:`redact` runs, also JSON- or URL-escaped.

    Values shorter than six characters are not registered (they would mask ordinary text).
    """
    if not value or len(value) < _MIN_SECRET:
        return
    with _secrets_lock:
        if value not in _secrets and len(_secrets) < _MAX_SECRETS:
            _secrets[value] = _literal_pattern(value)


def _literal_pattern(value: str) -> re.Pattern[str]:
    """Each character as itself, backslash-escaped, ``\\uXXXX`` or ``%XX``."""
    spellings = []
    for char in value:
        options = [r"\\*" + re.escape(char), rf"\\+u(?i:{ord(char):04x})"]
        if ord(char) < 128:
            options.append(f"%(?i:{ord(char):02x})")
        spellings.append("(?:" + "|".join(options) + ")")
    return re.compile("".join(spellings))


def redact(text: str) -> str:
    """Mask keys, authorization values, URL credentials and registered secrets in ``text``."""
    with _secrets_lock:
        literals = list(_secrets.values())
    for literal in literals:
        text = literal.sub(MASK, text)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
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
