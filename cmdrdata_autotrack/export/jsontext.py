"""JSON text for the journal and the spool: the standard library's C encoder and scanner,
each set up once instead of on every call.

``json.JSONEncoder.encode`` makes a new C encoder on every call, about a microsecond of
the few that a journal line costs the app's thread; with no circular-reference check
that encoder keeps no state between calls, so one made at import serves every call.
``json.JSONDecoder.decode`` matches whitespace before and after the value with two
regular expressions; a journal line has none, so its value is scanned directly and
only a line that is not exactly one value takes the standard path (which raises the
standard errors). Where the C encoder is missing (another Python) or writes other text
than the standard encoder would, the standard encoder is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _stdlib
from typing import Any

Encode = Callable[[Any], str]
# The standard library's C encoder maker (None on a Python without it).
_make_c_encoder: Callable[..., Any] | None = getattr(_stdlib, "c_make_encoder", None)

# Written by both ways when an encoder is made: the kept one must give the same text.
_PROBE = {"s": 'é\n"\\\u2028', "n": [0, -1, 2**70, 1.5, 1e300, True, False, None], "o": {}}


def compact_encoder(
    default: Callable[[Any], Any] | None = None,
    *,
    allow_nan: bool = True,
    skipkeys: bool = False,
) -> Encode:
    """``json.JSONEncoder(separators=(",", ":"), check_circular=False, ...).encode``,
    without its per-call set-up. Values must not be circular (that is not checked)."""
    standard = json.JSONEncoder(
        separators=(",", ":"),
        check_circular=False,
        skipkeys=skipkeys,
        allow_nan=allow_nan,
        default=default,
    )
    make = _make_c_encoder
    if make is None:
        return standard.encode
    try:
        encode_c = make(
            None,  # no markers: nothing is remembered from one call to the next
            standard.default,
            _stdlib.encode_basestring_ascii,
            None,
            ":",
            ",",
            False,
            skipkeys,
            allow_nan,
        )
    except Exception:  # a Python whose C encoder takes other arguments
        return standard.encode
    join = "".join

    def encode(value: Any) -> str:
        return join(encode_c(value, 0))

    try:
        if encode(_PROBE) == standard.encode(_PROBE):
            return encode
    except Exception:
        pass
    return standard.encode


def line_decoder() -> Callable[[str], Any]:
    """``json.JSONDecoder().decode`` for text that is one JSON value and nothing else
    (a journal line), scanned without the whitespace matches; other text is decoded the
    standard way, which raises what ``json.loads`` raises."""
    standard = json.JSONDecoder()
    scan: Callable[[str, int], tuple[Any, int]] = standard.scan_once  # type: ignore[attr-defined]

    def decode(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:  # not a value at the first character
            return standard.decode(text)
        if end != len(text):  # whitespace around it, or more after it
            return standard.decode(text)
        return value

    return decode
