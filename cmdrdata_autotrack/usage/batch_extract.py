"""The lines of a Batch API output file: one billed request each, with its usage.

A line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``; its body is what the endpoint would have answered (a chat completion, a
response, embeddings...). Lines that failed (an error, a status other than 200, no
usage) bill nothing. Never raises: a line that is not JSON is skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .extract import (
    extract_chat,
    extract_embeddings,
    extract_generic,
    extract_responses,
    field,
    text,
)
from .model import ResponseInfo, Usage

MAX_LINE = 16 * 1024 * 1024


@dataclass(slots=True)
class BatchLine:
    line_id: str | None
    custom_id: str | None
    request_id: str | None
    usage: Usage | None
    info: ResponseInfo


def _body_usage(body: Any) -> tuple[Usage | None, ResponseInfo]:
    kind = field(body, "object")
    if kind in ("chat.completion", "text_completion"):
        return extract_chat(body)
    if kind == "response":
        return extract_responses(body)
    if kind == "list" and field(field(body, "usage"), "prompt_tokens") is not None:
        return extract_embeddings(body)
    return extract_generic(body)


def is_output_line(line: Any) -> bool:
    """A line of an output (or error) file, as opposed to an input file's request."""
    return isinstance(line, dict) and "custom_id" in line and "response" in line


def read_output(data: bytes) -> tuple[list[BatchLine], int]:
    """The billed lines of an output file, and how many lines could not be read."""
    billed: list[BatchLine] = []
    bad = 0
    for raw in _lines(data):
        try:
            line = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if not is_output_line(line):
            bad += 1
            continue
        response = line.get("response")
        if line.get("error") or field(response, "status_code") != 200:
            continue  # a failed request: not billed
        body = field(response, "body")
        usage, info = _body_usage(body)
        if usage is None or usage.is_empty():
            continue
        billed.append(
            BatchLine(
                line_id=text(line.get("id"), 128),
                custom_id=text(line.get("custom_id"), 512),
                request_id=text(field(response, "request_id"), 128),
                usage=usage,
                info=info,
            )
        )
    return billed, bad


def _lines(data: bytes) -> Iterator[bytes]:
    for raw in data.split(b"\n"):
        raw = raw.strip()
        if raw and len(raw) <= MAX_LINE:
            yield raw
