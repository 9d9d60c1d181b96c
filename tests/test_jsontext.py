"""The journal's and the spool's JSON text (export.jsontext): the standard library's text,
byte for byte, and its errors, with the encoder and the scanner set up once."""

from __future__ import annotations

import json
import math
import platform
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmdrdata_autotrack.export import jsontext
from cmdrdata_autotrack.export.pipeline import _decode_line, journal_line

pytestmark = pytest.mark.sdk_independent

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def standard(**options: Any) -> json.JSONEncoder:
    return json.JSONEncoder(separators=(",", ":"), check_circular=False, **options)


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_text_is_the_standard_encoders(value: Any) -> None:
    assert jsontext.compact_encoder()(value) == standard().encode(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.one_of(st.text(), st.integers(), st.floats(), st.none()), scalars))
def test_keys_are_skipped_or_written_as_the_standard_encoder_does(value: Any) -> None:
    # int, float and None keys are written as text, as json.dumps writes them
    assert jsontext.compact_encoder(skipkeys=True)(value) == standard(skipkeys=True).encode(value)


def test_a_key_json_cannot_write_is_skipped_or_refused_as_the_standard_encoder_does() -> None:
    value = {("a", 1): 1, "b": 2}
    assert jsontext.compact_encoder(skipkeys=True)(value) == '{"b":2}'
    with pytest.raises(TypeError):
        jsontext.compact_encoder()(value)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_is_refused_where_it_must_be(number: float) -> None:
    with pytest.raises(ValueError):
        jsontext.compact_encoder(allow_nan=False)({"x": [number]})
    assert jsontext.compact_encoder()({"x": number}) == standard().encode({"x": number})


def test_an_object_json_has_no_form_for_goes_through_default() -> None:
    class Odd:
        pass

    seen: list[object] = []

    def default(obj: object) -> dict[str, Any]:
        seen.append(obj)
        return {"odd": True}

    odd = Odd()
    assert jsontext.compact_encoder(default)({"a": [odd]}) == '{"a":[{"odd":true}]}'
    assert seen == [odd]
    with pytest.raises(TypeError):
        jsontext.compact_encoder()({"a": odd})  # no default: the standard TypeError


def test_one_encoder_serves_many_calls_and_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    encode = jsontext.compact_encoder()
    items = [{"i": i, "s": "x" * i, "l": list(range(i % 7))} for i in range(400)]
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(encode, items))
    assert texts == [standard().encode(item) for item in items]


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="CPython's C encoder")
def test_on_cpython_the_encoder_made_once_is_the_one_used() -> None:
    # (where it wrote other text than the standard encoder, the standard one would be)
    assert jsontext._make_c_encoder is not None
    for encoder in (jsontext.compact_encoder(), jsontext.compact_encoder(allow_nan=False)):
        assert not isinstance(getattr(encoder, "__self__", None), json.JSONEncoder)


def test_without_the_c_encoder_the_standard_one_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsontext, "_make_c_encoder", None)
    encode = jsontext.compact_encoder(allow_nan=False)
    assert encode({"a": [1, "é"]}) == '{"a":[1,"\\u00e9"]}'
    with pytest.raises(ValueError):
        encode({"a": math.nan})


def test_a_c_encoder_that_writes_other_text_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    def make(*args: Any) -> Any:
        return lambda value, level: ["{}"]  # writes the same text whatever it is given

    monkeypatch.setattr(jsontext, "_make_c_encoder", make)
    assert jsontext.compact_encoder()({"a": 1}) == '{"a":1}'


def test_a_c_encoder_that_takes_other_arguments_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make(*args: Any) -> Any:
        raise TypeError("takes 10 arguments")

    monkeypatch.setattr(jsontext, "_make_c_encoder", make)
    assert jsontext.compact_encoder()([1, None]) == "[1,null]"


@settings(max_examples=300, deadline=None)
@given(values)
def test_a_journal_line_reads_back_as_json_loads_reads_it(value: Any) -> None:
    text = jsontext.compact_encoder()(value)
    decoded, expected = _decode_line(text), json.loads(text)
    assert json.dumps(decoded) == json.dumps(expected)  # (NaN != NaN: compared as text)


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", '{"a":1}x', '{"a":1}{"b":2}', "nul", '"unterminated', "[1,]", "\ufeff{}"],
)
def test_text_that_is_not_one_value_raises_what_the_standard_decoder_raises(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.JSONDecoder().decode(text)  # (json.loads names a BOM; a decoder does not)
    with pytest.raises(json.JSONDecodeError) as raised:
        _decode_line(text)
    assert (raised.value.msg, raised.value.pos) == (expected.value.msg, expected.value.pos)


@pytest.mark.parametrize("text", [' {"a":1}', '{"a":1} ', '{"a":1}\n', "\t[1]\r\n", " 1 "])
def test_whitespace_around_the_value_is_read_past_as_json_loads_does(text: str) -> None:
    assert _decode_line(text) == json.loads(text)


def test_a_span_record_line_is_the_standard_text() -> None:
    record = {
        "v": 1,
        "a": {"gen_ai.request.model": "gpt-4o-mini", "x": 1.25, "n": [1, 2]},
        "t": 2**127 + 5,
        "s": 2**63 + 1,
        "b": 1,
        "e": 2,
        "ok": True,
    }
    line = journal_line(record)
    assert line == standard(skipkeys=True).encode(record) + "\n"
    assert _decode_line(line[:-1]) == record
