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
from dataclasses import dataclass
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
        "batch_size",
        "CMDRDATA_BATCH_SIZE",
        "int",
        "1",
        "Events per delivery request. 1 (the default) posts each event to the events API; "
        "more posts batches to the batch endpoint.",
        option="--batch-size",
    ),
    Setting(
        "batch_endpoint",
        "CMDRDATA_BATCH_ENDPOINT",
        "str",
        None,
        "The batch events endpoint (default: the events endpoint + `/batch`).",
    ),
    Setting(
        "spool_dir",
        "CMDRDATA_SPOOL_DIR",
        "str",
        None,
        "Folder of the durable spool (journal and SQLite queue) shared by the app's "
        "processes. Default: `cmdrdata-autotrack` in the user's cache folder.",
        option="--spool-dir",
    ),
    Setting(
        "spool_max_mb",
        "CMDRDATA_SPOOL_MAX_MB",
        "float",
        "256",
        "Most the spool may hold, in MB; past it the overflow policy applies.",
    ),
    Setting(
        "spool_overflow",
        "CMDRDATA_SPOOL_OVERFLOW",
        "choice",
        "drop-newest",
        "What a full spool does: `drop-newest` (refuse new events) or `drop-oldest`. "
        "Either way each dropped event is counted and logged.",
        choices=("drop-newest", "drop-oldest"),
    ),
    Setting(
        "ledger_path",
        "CMDRDATA_LEDGER_PATH",
        "str",
        None,
        "The local ledger used when no API key is set. Default: `ledger.sqlite3` in "
        "the user's data folder (`cmdrdata-autotrack`).",
        option="--ledger",
    ),
    Setting(
        "shutdown_timeout",
        "CMDRDATA_SHUTDOWN_TIMEOUT",
        "float",
        "5",
        "Seconds the agent may spend delivering at exit or on SIGTERM; what is left "
        "stays in the spool for the next process.",
    ),
    Setting(
        "retry_base_delay",
        "CMDRDATA_RETRY_BASE_DELAY",
        "float",
        "0.5",
        "First retry delay in seconds (exponential backoff with full jitter).",
    ),
    Setting(
        "retry_max_delay",
        "CMDRDATA_RETRY_MAX_DELAY",
        "float",
        "60",
        "Longest delay between two attempts at one event, in seconds.",
    ),
    Setting(
        "breaker_threshold",
        "CMDRDATA_BREAKER_THRESHOLD",
        "int",
        "5",
        "Consecutive failed deliveries that open the circuit breaker.",
    ),
    Setting(
        "breaker_cooldown",
        "CMDRDATA_BREAKER_COOLDOWN",
        "float",
        "30",
        "Seconds the open breaker waits before one probe (doubling up to 10 minutes).",
    ),
    Setting(
        "metrics_port",
        "CMDRDATA_METRICS_PORT",
        "int",
        None,
        "Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` on this port. "
        "Off when unset.",
        option="--metrics-port",
    ),
    Setting(
        "metrics_host",
        "CMDRDATA_METRICS_HOST",
        "str",
        "127.0.0.1",
        "The address the metrics server listens on (loopback by default; `0.0.0.0` "
        "for a Kubernetes probe).",
    ),
    Setting(
        "unattributed_customer",
        "CMDRDATA_UNATTRIBUTED_CUSTOMER",
        "str",
        "unattributed",
        "The `customer_id` sent for usage no customer was named for.",
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
    Setting(
        "log_format",
        "CMDRDATA_LOG_FORMAT",
        "choice",
        "text",
        "`text` or `json` (one object a line, with the event and trace ids).",
        option="--log-format",
        choices=("text", "json"),
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
    batch_size: int = 1
    batch_endpoint: str | None = None
    spool_dir: str | None = None
    spool_max_mb: float = 256.0
    spool_overflow: str = "drop-newest"
    ledger_path: str | None = None
    shutdown_timeout: float = 5.0
    retry_base_delay: float = 0.5
    retry_max_delay: float = 60.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    unattributed_customer: str = "unattributed"
    customer_id: str | None = None
    stream_usage: str = "auto"
    capture_content: bool = False
    traces_exporter: str | None = None
    service_name: str | None = None
    log_level: str = "warning"
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: object) -> Settings:
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


def known_overrides(values: Mapping[str, object]) -> dict[str, object]:
    """Keep the overrides that name a setting, parsed like its variable; warn about the rest."""
    out: dict[str, object] = {}
    for name, value in values.items():
        if name not in _BY_NAME:
            logger.warning("cmdrdata: unknown setting %r ignored", name)
            continue
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        out[name] = _parse(_BY_NAME[name], text)
    return out


def mask_secret(value: object) -> str:
    """Show only enough of a secret to recognise it: ``tk-a…``."""
    text = str(value)
    return text[:4] + "…" if len(text) > 8 else "…"


def setting(name: str) -> Setting:
    return _BY_NAME[name]


def reference_markdown() -> str:
    """The configuration reference table (docs/configuration.md embeds it verbatim)."""
    rows = [
        "| variable | `cmdrdata-run` option | `instrument()` keyword | type | default | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for item in SETTINGS:
        option = f"`{item.option}`" if item.option else "-"
        default = f"`{item.default}`" if item.default is not None else "unset"
        kind = "one of " + ", ".join(f"`{c}`" for c in item.choices) if item.choices else item.kind
        rows.append(
            f"| `{item.env}` | {option} | `{item.name}` | {kind} | {default} | {item.help} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m cmdrdata_autotrack.config
    print(reference_markdown(), end="")
