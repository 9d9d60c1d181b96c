"""A small HTTP server for operators: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``.

Off unless ``CMDRDATA_METRICS_PORT`` is set; it listens on ``CMDRDATA_METRICS_HOST``
(loopback by default). ``/healthz`` answers 200 while the agent runs (liveness).
``/readyz`` answers 200 when the agent can deliver (or records to the ledger),
503 with the reason otherwise: delivery refused at start-up (insecure endpoint),
key or endpoint refused by the API, or the circuit breaker open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import metrics
from .logging import logger

PREFIX = "cmdrdata_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}


def prometheus_text(
    counters: Mapping[str, int],
    observations: Mapping[str, Mapping[str, float]],
    gauges: Mapping[str, float],
    breaker: str | None,
) -> str:
    """The agent's metrics in the Prometheus text exposition format."""
    lines: list[str] = []
    for name, description in metrics.DESCRIPTIONS.items():
        metric = f"{PREFIX}{name}_total"
        lines += [
            f"# HELP {metric} {description}",
            f"# TYPE {metric} counter",
            f"{metric} {counters.get(name, 0)}",
        ]
    for name, stats in sorted(observations.items()):
        metric = f"{PREFIX}{name}"
        lines += [
            f"# HELP {metric} {name.replace('_', ' ')}",
            f"# TYPE {metric} summary",
            f"{metric}_count {int(stats['count'])}",
            f"{metric}_sum {stats['sum']:.6f}",
        ]
    for name, value in sorted(gauges.items()):
        metric = f"{PREFIX}{name}"
        lines += [f"# TYPE {metric} gauge", f"{metric} {value:g}"]
    if breaker is not None:
        metric = f"{PREFIX}circuit_breaker_state"
        lines += [
            f"# HELP {metric} 0 closed, 1 half-open, 2 open",
            f"# TYPE {metric} gauge",
            f"{metric} {BREAKER_VALUES.get(breaker, 0)}",
        ]
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        gauges: Callable[[], Mapping[str, float]],
        readiness: Callable[[], tuple[bool, str]],
        breaker: Callable[[], str | None],
    ) -> None:
        self._gauges, self._readiness, self._breaker = gauges, readiness, breaker
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    owner._send(self, 200, owner.metrics_text(), CONTENT_TYPE)
                elif path == "/healthz":
                    owner._send(self, 200, "ok\n")
                elif path == "/readyz":
                    ready, reason = owner._readiness()
                    owner._send(self, 200 if ready else 503, reason + "\n")
                else:
                    owner._send(self, 404, "not found\n")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="cmdrdata-metrics", daemon=True
        )

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, code: int, body: str, ctype: str = "text/plain"
    ) -> None:
        raw = body.encode()
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def metrics_text(self) -> str:
        try:
            gauges = dict(self._gauges())
        except Exception:
            gauges = {}
        return prometheus_text(metrics.snapshot(), metrics.observations(), gauges, self._breaker())

    def start(self) -> HealthServer:
        self.thread.start()
        logger.info("metrics and health on http://%s:%d/metrics", *self.server.server_address[:2])
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
