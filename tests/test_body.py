"""Request bodies: pydantic's one-pass JSON validation agrees with FastAPI's way."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from notifier.api.body import parse_json
from notifier.api.problem import ApiError
from notifier.schemas import NotificationRequest

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
ADDRESSES = st.sampled_from(
    ["ada@example.com", "Bob@Example.COM", {"address": "cy@example.com", "name": "Cy, Jr."}]
)
TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=20)
#: Control characters and lone surrogates: refused in a subject or a header.
BAD_TEXT = st.text(st.characters(categories=("Cc", "Cs")), min_size=1, max_size=3)


def the_fastapi_way(raw: bytes) -> NotificationRequest | str:
    """What FastAPI itself makes of the body: ``json.loads``, then validation."""
    try:
        return NotificationRequest.model_validate(json.loads(raw))
    except (ValueError, ValidationError, RecursionError):
        return "refused"


def parsed(raw: bytes) -> NotificationRequest | str:
    try:
        return parse_json(raw, NotificationRequest)
    except (RequestValidationError, ApiError):
        return "refused"


#: Each field as clients send it, and (drawn for at most one field) as they should not.
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "to": (
        st.lists(ADDRESSES, min_size=1, max_size=2),
        st.just([]) | st.just(["Ada <ada@example.com>"]),
    ),
    "subject": (TEXT, BAD_TEXT | JSON_VALUES),
    "text": (TEXT, st.none()),
    "metadata": (
        st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
        JSON_VALUES | st.just({"x": float("nan")}) | st.just({"x": "\ud800"}),
    ),
    "headers": (
        st.dictionaries(st.sampled_from(["X-Tag", "X-Id"]), TEXT, max_size=2),
        st.dictionaries(st.sampled_from(["Subject", "X-Tag"]), BAD_TEXT, min_size=1),
    ),
}


@settings(max_examples=300, derandomize=True, deadline=None)
@given(data=st.data(), spoiled=st.sampled_from([None, None, *FIELDS]), ascii_only=st.booleans())
def test_a_body_is_accepted_or_refused_exactly_as_fastapi_would(
    data: st.DataObject, spoiled: str | None, ascii_only: bool
) -> None:
    document = {
        name: data.draw(bad if name == spoiled else good, label=name)
        for name, (good, bad) in FIELDS.items()
    }
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")

    expected, got = the_fastapi_way(raw), parsed(raw)

    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
    else:
        assert repr(got.model_dump(by_alias=True)) == repr(expected.model_dump(by_alias=True))


@pytest.mark.parametrize(
    "raw",
    [
        '{"to": ["ada@example.com"], "text": "hi"}'.encode("utf-16"),
        b'{"to": ["ada@example.com"], "text": "hi", "metadata": {"a": 1, "a": 2}}',
        b'{"to": ["ada@example.com"], "text": "hi", "metadata": {"big": 9223372036854775807}}',
    ],
    ids=["utf-16", "duplicate-key", "largest-64-bit-integer"],
)
def test_bodies_pydantic_alone_would_read_differently_are_read_as_fastapi_reads_them(
    raw: bytes,
) -> None:
    expected = the_fastapi_way(raw)

    assert not isinstance(expected, str)
    assert parsed(raw) == expected
