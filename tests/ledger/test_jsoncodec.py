"""JSON in and out of the database: fast, and exact where the standard library is."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import jsoncodec

documents = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(documents)
def test_what_is_written_reads_back_equal_whatever_the_integers(value: Any) -> None:
    assert jsoncodec.loads(jsoncodec.dumps(value)) == value
    assert jsoncodec.loads(jsoncodec.dumps(value).encode()) == value


@pytest.mark.parametrize(
    "document",
    [
        pytest.param('{"amount": 123456789012345678901234567890}', id="integer past 64 bits stays an integer"),
        pytest.param('{"amount": -9223372036854775809}', id="just below the smallest 64-bit integer"),
        pytest.param('{"id": "in_1", "created": 1700000000, "total": 4200}', id="a Stripe object"),
        pytest.param('{"text": "\\ud800"}', id="lone surrogate escaped"),
    ],
)
def test_reads_as_the_standard_library_does(document: str) -> None:
    expected = json.loads(document)
    assert jsoncodec.loads(document) == expected
    assert type(jsoncodec.loads(document)) is type(expected)
    assert jsoncodec.loads(memoryview(document.encode())) == expected


def test_a_lone_surrogate_in_text_is_written_and_read_back() -> None:
    assert jsoncodec.loads(jsoncodec.dumps({"name": "\ud800"})) == {"name": "\ud800"}


def test_integer_keys_are_written_as_text_like_the_standard_library() -> None:
    assert json.loads(jsoncodec.dumps({1: "a"})) == json.loads(json.dumps({1: "a"}))


@given(st.lists(documents))
def test_a_copy_is_equal_and_shares_nothing(document: list[Any]) -> None:
    copied = jsoncodec.copy(document)
    assert copied == document
    copied.append("added")
    assert copied[:-1] == document
    for inner, original in zip(copied, document, strict=False):
        if isinstance(original, dict | list):
            assert inner is not original
