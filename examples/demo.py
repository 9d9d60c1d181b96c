"""The README's demo: run an unmodified app under ``cmdrdata-run`` against a local
stand-in for the OpenAI API, show the span each call became, and the usage report
from the local ledger (the default when no cmdrdata API key is set).

    python examples/demo.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from local_openai import serve

HERE = Path(__file__).resolve().parent
LAUNCHER = Path(sys.executable).with_name("cmdrdata-run")
REPORT = Path(sys.executable).with_name("cmdrdata-autotrack")


def spans_in(text: str) -> list[dict[str, Any]]:
    """The JSON spans the console exporter printed."""
    decoder, spans, index = json.JSONDecoder(), [], text.find("{")
    while index != -1:
        try:
            obj, index = decoder.raw_decode(text, index)
        except ValueError:
            index += 1
        else:
            if isinstance(obj, dict) and "attributes" in obj:
                spans.append(obj)
        index = text.find("{", index)
    return spans


def main() -> int:
    server, base_url = serve()
    state = Path(tempfile.mkdtemp(prefix="cmdrdata-demo-"))
    env = {
        **{k: v for k, v in os.environ.items() if k != "CMDRDATA_API_KEY"},
        # no API key: usage goes to a local ledger (here a fresh one for the demo)
        "CMDRDATA_LEDGER_PATH": str(state / "ledger.sqlite3"),
        "CMDRDATA_SPOOL_DIR": str(state / "spool"),
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "sk-demo-not-a-real-key",
        "OTEL_SERVICE_NAME": "demo-app",
        # the stand-in is not api.openai.com: ask it for stream usage all the same
        "CMDRDATA_STREAM_USAGE": "always",
    }
    command = [
        str(LAUNCHER),
        "--traces-exporter",
        "console",
        sys.executable,
        str(HERE / "demo_app.py"),
    ]
    print(f"Stand-in OpenAI API at {base_url}")
    print("$ cmdrdata-run --traces-exporter console python examples/demo_app.py\n")
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    server.shutdown()
    print(result.stdout)
    spans = spans_in(result.stderr)
    if result.returncode != 0 or not spans:
        print(result.stderr, file=sys.stderr)
        return result.returncode or 1
    print(f"{len(spans)} spans, one per OpenAI call (the console exporter prints them whole):\n")
    print(f"  {'span':<36} {'customer':<11} {'input':>6} {'output':>7} {'total':>6}")
    for span in spans:
        a = span["attributes"]
        print(
            f"  {span['name']:<36} {a.get('cmdrdata.customer.id', '-'):<11}"
            f" {a.get('gen_ai.usage.input_tokens', '-'):>6}"
            f" {a.get('gen_ai.usage.output_tokens', '-'):>7}"
            f" {a.get('cmdrdata.usage.total_tokens', '-'):>6}"
        )
    print("\n$ cmdrdata-autotrack report\n")
    sys.stdout.flush()
    return subprocess.run([str(REPORT), "report"], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
