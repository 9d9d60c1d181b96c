"""Configuration: the one table of every setting, read from the environment.

Every setting has an environment variable, an optional ``cmdrdata-run`` option,
a type and a default. The launcher builds its options from :data:`SETTINGS`, and
the configuration reference in ``docs/`` is generated from it, so the three can
never drift apart. Values are parsed leniently: a malformed value logs one
warning and falls back to the default (configuration must never crash the app).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

logger = logging.getLogger("cmdrdata_autotrack.config")

Kind = Literal["str", "bool", "float", "int", "choice"]

DEFAULT_ENDPOINT = "https://api.cmdrdata.ai/api/events"


@dataclass(frozen=True)
class Setting:
    """One configurable value: where it comes from and what it means."""

    name: str  # attribute name on :class:`Settings`
    env: str  # environment variable
    kind: Kind
    default: str | None  # as it would be written in the environment
    help: str
    option: str | None = None  # cmdrdata-run option, e.g. "--customer-id"
    choices: tuple[str, ...] = ()
    secret: bool = False  # masked wherever it is shown


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "disabled",
        "CMDRDATA_DISABLED",
        "bool",
        "false",
        "Turn metering and tracing off; `customer_id=` and `tracking_metadata=` are "
        "still accepted and dropped so the app keeps working.",
        option="--disabled",
    ),
    Setting(
        "api_key",
        "CMDRDATA_API_KEY",
        "str",
        None,
        "The cmdrdata tracker key. Without one, usage goes to the local ledger.",
        option="--api-key",
        secret=True,
    ),
    Setting(
        "endpoint",
        "CMDRDATA_ENDPOINT",
        "str",
        DEFAULT_ENDPOINT,
        "The cmdrdata events API (https, or http on a loopback address).",
        option="--endpoint",
    ),
    Setting(
        "timeout",
        "CMDRDATA_TIMEOUT",
        "float",
        "5.0",
        "Seconds a delivery request may take before it is retried.",
        option="--timeout",
    ),
    Setting(
        "customer_id",
        "CMDRDATA_CUSTOMER_ID",
        "str",
        None,
        "Default customer for calls that name none (lowest precedence).",
        option="--customer-id",
    ),
    Setting(
        "stream_usage",
        "CMDRDATA_STREAM_USAGE",
        "choice",
        "auto",
        "Ask for `stream_options.include_usage` on chat/legacy completion streams: "
        "`auto` (only on OpenAI's own API hosts), `always` or `never`. The extra "
        "usage chunk is hidden from the caller.",
        option="--stream-usage",
        choices=("auto", "always", "never"),
    ),
    Setting(
        "capture_content",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        "bool",
        "false",
        "Record prompts and completions on spans (off by default: content stays private).",
        option="--capture-content",
    ),
    Setting(
        "traces_exporter",
        "OTEL_TRACES_EXPORTER",
        "str",
        None,
        "Where traces go when the app has not configured OpenTelemetry: `console`, "
        "`otlp`, `none` (comma-separated). Unset: `otlp` if an OTLP endpoint is set, "
        "else `none`. Metering does not depend on it.",
        option="--traces-exporter",
    ),
    Setting(
        "service_name",
        "OTEL_SERVICE_NAME",
        "str",
        None,
        "The `service.name` resource attribute of the agent's tracer provider.",
        option="--service-name",
    ),
    Setting(
        "log_level",
        "CMDRDATA_LOG_LEVEL",
        "choice",
        "warning",
        "Level of the agent's own log lines (`debug`, `info`, `warning`, `error`).",
        option="--log-level",
        choices=("debug", "info", "warning", "error", "critical"),
    ),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_bool(raw: str, setting: Setting) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        logger.warning(
            "%s=%r is not a boolean (use true/false); using %s", setting.env, raw, setting.default
        )
        return (setting.default or "false") in _TRUE
    return False


def _parse(setting: Setting, raw: str | None) -> object:
    if raw is None:
        raw = setting.default
    if raw is None:
        return None
    if setting.kind == "bool":
        return parse_bool(raw, setting)
    if setting.kind in ("float", "int"):
        try:
            number = float(raw) if setting.kind == "float" else int(raw)
        except ValueError:
            number = None
        if number is None or number < 0:
            logger.warning(
                "%s=%r is not a non-negative number; using %s", setting.env, raw, setting.default
            )
            return _parse(setting, setting.default)
        return number
    if setting.kind == "choice":
        value = raw.strip().lower()
        if value not in setting.choices:
            logger.warning(
                "%s=%r is not one of %s; using %s",
                setting.env,
                raw,
                "/".join(setting.choices),
                setting.default,
            )
            return setting.default
        return value
    stripped = raw.strip()
    return stripped or None


@dataclass(frozen=True)
class Settings:
    """The agent's configuration, resolved once at start-up."""

    disabled: bool = False
    api_key: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = 5.0
    customer_id: str | None = None
    stream_usage: str = "auto"
    capture_content: bool = False
    traces_exporter: str | None = None
    service_name: str | None = None
    log_level: str = "warning"
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every setting from ``environ``; keyword arguments win over it."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for setting in SETTINGS:
            if overrides.get(setting.name) is not None:
                values[setting.name] = overrides[setting.name]
            else:
                values[setting.name] = _parse(setting, env.get(setting.env))
        return cls(**values)  # type: ignore[arg-type]

    def masked(self) -> dict[str, object]:
        """The settings as a dict with secrets masked, for display."""
        out: dict[str, object] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            out[setting.env] = mask_secret(value) if setting.secret and value else value
        return out


def mask_secret(value: object) -> str:
    """Show only enough of a secret to recognise it: ``tk-a…``."""
    text = str(value)
    return text[:4] + "…" if len(text) > 8 else "…"


def setting(name: str) -> Setting:
    return _BY_NAME[name]
