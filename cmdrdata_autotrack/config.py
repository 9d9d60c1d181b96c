"""Configuration: the one table of every setting, read from the environment.

Every setting has an environment variable, an optional ``cmdrdata-run`` option,
a type and a default. The launcher builds its options from :data:`SETTINGS`, and
the configuration reference in ``docs/`` is generated from it, so the three can
never drift apart. Numbers have a range, part of the table too.

Values are parsed leniently and strictly at once: an empty value means unset (the
default), and a malformed or out-of-range one logs one warning naming the
variable and falls back to the default (configuration must never crash the app,
nor hand a consumer a NaN, an infinity or a port that does not exist).
:class:`Settings` checks its fields on construction, so every way of making one
(the environment, ``instrument()`` keywords, ``TrackedOpenAI``, ``replace``)
yields valid values.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
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
    minimum: float | None = None  # numbers: the accepted range, bounds included
    maximum: float | None = None

    def expects(self) -> str:
        """What a valid value looks like, for warnings and the reference table."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + "/".join(self.choices)
        if self.kind in ("int", "float"):
            what = "a whole number" if self.kind == "int" else "a number"
            return f"{what} from {_number_text(self.minimum)} to {_number_text(self.maximum)}"
        return "text"


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
        minimum=0.01,
        maximum=600,
    ),
    Setting(
        "batch_size",
        "CMDRDATA_BATCH_SIZE",
        "int",
        "500",
        "Most events per delivery request: what has accumulated (up to this many, and about "
        "1 MB) goes as one request to the batch endpoint. 1 posts each event on its own to "
        "the events endpoint.",
        option="--batch-size",
        minimum=1,
        maximum=1000,
    ),
    Setting(
        "max_in_flight",
        "CMDRDATA_MAX_IN_FLIGHT",
        "int",
        "4",
        "Delivery requests a process may have in flight at once, each with its own events, "
        "when a backlog is waiting.",
        minimum=1,
        maximum=64,
    ),
    Setting(
        "batch_linger",
        "CMDRDATA_BATCH_LINGER",
        "float",
        "0.2",
        "Seconds a request that is not full waits after the previous one, so that events "
        "arriving one by one share a request (0: send at once).",
        minimum=0,
        maximum=5,
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
        minimum=0.01,
        maximum=1048576,
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
        "ledger_url",
        "CMDRDATA_LEDGER_URL",
        "str",
        None,
        "A PostgreSQL database (`postgresql://user:password@host:5432/db`) that every "
        "process of a fleet records its usage in, with a key or without; `report` and "
        "`reconcile` then read it. Needs `cmdrdata-autotrack[postgres]`. Unset: the local "
        "ledger.",
        secret=True,
    ),
    Setting(
        "ledger_retention",
        "CMDRDATA_LEDGER_RETENTION",
        "float",
        "35",
        "Days the fleet ledger, and with an API key the local metered record "
        "(`metered.sqlite3` in the spool folder), keep usage per hour, customer, model and "
        "unit (the events themselves, or the metered record's minutes: 2 days).",
        minimum=1,
        maximum=3650,
    ),
    Setting(
        "pending_ttl_days",
        "CMDRDATA_PENDING_TTL_DAYS",
        "float",
        "30",
        "Days started background work (background responses, batches, runs) is remembered "
        "while the agent waits to see it finished and billed (`pending.sqlite3` in the spool "
        "folder).",
        minimum=0.01,
        maximum=3650,
    ),
    Setting(
        "shutdown_timeout",
        "CMDRDATA_SHUTDOWN_TIMEOUT",
        "float",
        "5",
        "Seconds the agent may spend delivering at exit or on SIGTERM; what is left "
        "stays in the spool for the next process.",
        minimum=0,
        maximum=3600,
    ),
    Setting(
        "retry_base_delay",
        "CMDRDATA_RETRY_BASE_DELAY",
        "float",
        "0.5",
        "First retry delay in seconds (exponential backoff with full jitter).",
        minimum=0.01,
        maximum=3600,
    ),
    Setting(
        "retry_max_delay",
        "CMDRDATA_RETRY_MAX_DELAY",
        "float",
        "60",
        "Longest delay between two attempts at one event, in seconds.",
        minimum=0.01,
        maximum=86400,
    ),
    Setting(
        "breaker_threshold",
        "CMDRDATA_BREAKER_THRESHOLD",
        "int",
        "5",
        "Consecutive failed deliveries that open the circuit breaker.",
        minimum=1,
        maximum=1000,
    ),
    Setting(
        "breaker_cooldown",
        "CMDRDATA_BREAKER_COOLDOWN",
        "float",
        "30",
        "Seconds the open breaker waits before one probe (doubling up to 10 minutes).",
        minimum=0.01,
        maximum=600,
    ),
    Setting(
        "metrics_port",
        "CMDRDATA_METRICS_PORT",
        "int",
        None,
        "Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` on this port. "
        "Off when unset.",
        option="--metrics-port",
        minimum=1,
        maximum=65535,
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
        "batch_customer_from_custom_id",
        "CMDRDATA_BATCH_CUSTOMER_FROM_CUSTOM_ID",
        "str",
        None,
        "Bill each line of a Batch output file to the customer its `custom_id` names: `1` "
        "takes the whole `custom_id`, any other text is a separator and the customer is what "
        "comes before it (`::` reads `acme::row-17` as `acme`). Unset: the batch's creator.",
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
        "limits_file",
        "CMDRDATA_LIMITS_FILE",
        "str",
        None,
        "A TOML file of per-customer, per-plan and default limits on requests, tokens and "
        "cost (see the Limits page). Off when unset.",
        option="--limits",
    ),
    Setting(
        "limits_redis_url",
        "CMDRDATA_LIMITS_REDIS_URL",
        "str",
        None,
        "Keep the limits' counters in this Redis (`redis://host:6379/0`) so every machine "
        "shares them. Unset: shared by the processes of this machine (SQLite in the spool "
        "folder). Needs `cmdrdata-autotrack[redis]`.",
        secret=True,
    ),
    Setting(
        "limits_sync_interval",
        "CMDRDATA_LIMITS_SYNC_INTERVAL",
        "float",
        "0.2",
        "Seconds between two syncs of a process's limit counters with the shared store: how "
        "late a process sees the others' usage (the overshoot bound).",
        minimum=0.01,
        maximum=60,
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
_FALSE = frozenset({"0", "false", "no", "off"})
# Plain decimal notation only: no nan/inf, hex, underscores, units or non-ASCII digits.
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_NUMBER_TEXT = 64  # longer is not a setting (and int() of huge digit strings is slow)


class InvalidValue(ValueError):
    """A value its setting cannot take."""


def _number_text(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _number(setting: Setting, value: object) -> float | int:
    """``value`` as the setting's number, within its range, or :class:`InvalidValue`."""
    number: float | int
    if isinstance(value, str):
        text = value.strip()
        pattern = _INT_TEXT if setting.kind == "int" else _FLOAT_TEXT
        if len(text) > _MAX_NUMBER_TEXT or not pattern.fullmatch(text):
            raise InvalidValue
        number = int(text) if setting.kind == "int" else float(text)
    elif isinstance(value, bool):  # True is an int to Python, not a count of seconds
        raise InvalidValue
    elif setting.kind == "int":
        if not isinstance(value, numbers.Integral):  # never a silently truncated float
            raise InvalidValue
        number = int(value)
    elif isinstance(value, numbers.Real):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise InvalidValue from None
    else:
        raise InvalidValue
    low = -math.inf if setting.minimum is None else setting.minimum
    high = math.inf if setting.maximum is None else setting.maximum
    # int/float comparisons are exact in Python; NaN fails both, so it is refused too
    if not low <= number <= high:
        raise InvalidValue
    return number if setting.kind == "int" else float(number) + 0.0  # -0.0 -> 0.0


def parse_value(setting: Setting, value: object) -> object:
    """The typed value of ``value``; ``None`` when it is unset (``None`` or blank).

    Raises :class:`InvalidValue` (or whatever ``str(value)`` raises): callers fall back."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if setting.kind in ("int", "float"):
        return _number(setting, value)
    if setting.kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise InvalidValue
    if setting.kind == "choice":
        text = str(value).strip().lower()
        if text not in setting.choices:
            raise InvalidValue
        return text
    return str(value).strip() or None


def _default(setting: Setting) -> object:
    # the defaults are valid (tests/test_settings.py checks each one)
    return None if setting.default is None else parse_value(setting, setting.default)


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _warn(setting: Setting, value: object, keyword: bool) -> None:
    if keyword:
        given, outcome = f"{setting.name}={_shown(value)} ({setting.env})", "keyword ignored"
    elif setting.default is None:
        given, outcome = f"{setting.env}={_shown(value)}", "leaving it unset"
    else:
        given, outcome = f"{setting.env}={_shown(value)}", f"using the default {setting.default}"
    logger.warning("cmdrdata: %s is not %s; %s", given, setting.expects(), outcome)


def resolve(setting: Setting, value: object) -> object:
    """``value`` parsed and checked. Unset gives the default, and so does an invalid
    value, with one warning naming the variable. Never raises."""
    try:
        parsed = parse_value(setting, value)
    except Exception:  # InvalidValue, or an object whose str() fails
        _warn(setting, value, keyword=False)
        return _default(setting)
    return _default(setting) if parsed is None else parsed


def _keyword(setting: Setting, value: object) -> object:
    """A keyword override parsed and checked; ``None`` when unset or invalid (one warning),
    so that the environment value applies."""
    try:
        return parse_value(setting, value)
    except Exception:
        _warn(setting, value, keyword=True)
        return None


@dataclass(frozen=True)
class Settings:
    """The agent's configuration, resolved once at start-up."""

    disabled: bool = False
    api_key: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = 5.0
    batch_size: int = 500
    max_in_flight: int = 4
    batch_linger: float = 0.2
    batch_endpoint: str | None = None
    spool_dir: str | None = None
    spool_max_mb: float = 256.0
    spool_overflow: str = "drop-newest"
    ledger_path: str | None = None
    ledger_url: str | None = None
    ledger_retention: float = 35.0
    pending_ttl_days: float = 30.0
    shutdown_timeout: float = 5.0
    retry_base_delay: float = 0.5
    retry_max_delay: float = 60.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    unattributed_customer: str = "unattributed"
    customer_id: str | None = None
    batch_customer_from_custom_id: str | None = None
    stream_usage: str = "auto"
    limits_file: str | None = None
    limits_redis_url: str | None = None
    limits_sync_interval: float = 0.2
    capture_content: bool = False
    traces_exporter: str | None = None
    service_name: str | None = None
    log_level: str = "warning"
    log_format: str = "text"

    def __post_init__(self) -> None:
        # Whoever built these settings (from_env, a test, dataclasses.replace with a
        # TrackedOpenAI keyword), consumers get finite, in-range, typed values.
        for item in SETTINGS:
            value = _keyword(item, getattr(self, item.name))
            object.__setattr__(self, item.name, _default(item) if value is None else value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: object) -> Settings:
        """Read every setting from ``environ``; keyword arguments win over it.

        A keyword that is ``None``, blank or invalid (one warning) leaves the
        environment value in place. Unknown keywords are ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for setting in SETTINGS:
            value = _keyword(setting, overrides.get(setting.name))
            if value is None:
                value = resolve(setting, env.get(setting.env))
            values[setting.name] = value
        return cls(**values)  # type: ignore[arg-type]

    def masked(self) -> dict[str, object]:
        """The settings as a dict with secrets masked, for display."""
        out: dict[str, object] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            out[setting.env] = mask_secret(value) if setting.secret and value else value
        return out


def known_overrides(values: Mapping[str, object]) -> dict[str, object]:
    """The keyword overrides that name a setting, parsed and checked like its variable.

    Unknown names and invalid values are left out, with one warning each, and so are
    ``None`` and blank values: the environment value then applies."""
    out: dict[str, object] = {}
    for name, value in values.items():
        if name not in _BY_NAME:
            logger.warning("cmdrdata: unknown setting %r ignored", name)
            continue
        parsed = _keyword(_BY_NAME[name], value)
        if parsed is not None:
            out[name] = parsed
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
        if item.choices:
            kind = "one of " + ", ".join(f"`{c}`" for c in item.choices)
        elif item.kind in ("int", "float"):
            kind = f"{item.kind}, {_number_text(item.minimum)} to {_number_text(item.maximum)}"
        else:
            kind = item.kind
        rows.append(
            f"| `{item.env}` | {option} | `{item.name}` | {kind} | {default} | {item.help} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m cmdrdata_autotrack.config
    print(reference_markdown(), end="")
