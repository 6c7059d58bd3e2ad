"""Hostile input at `POST /webhooks/stripe`: whatever the body and headers, the
receiver answers 200, 400 or 413 — never a 500 — and stores nothing that was
not signed with the endpoint secret."""

from __future__ import annotations

import json
import time
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ledger.db import Database
from tests.reliability.scenario import many_customers, stored_ids
from tests.stripe_payloads import WEBHOOK_SECRET, current_event, signature_header, signed
from webapp import MAX_BODY_BYTES

FUZZ = hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


bodies = st.one_of(
    st.binary(max_size=4096),
    st.text(max_size=2000).map(str.encode),
    st.text(alphabet=st.sampled_from('\x00\ufffd\u202e{}[]",:'), max_size=200).map(str.encode),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 200_000).map(deep),
    st.integers(1, 200_000).map(lambda depth: b"[" * depth),
)

header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=300)
hex_digests = st.text("0123456789abcdef", min_size=0, max_size=80)
timestamps = st.one_of(st.integers(-(2**70), 2**70), header_text.map(lambda text: text[:12]), st.just(""))
structured_headers = st.builds(
    lambda t, v1s, extra: ",".join([f"t={t}", *(f"v1={v}" for v in v1s), *extra]),
    timestamps,
    st.lists(hex_digests, max_size=200),
    st.lists(header_text.filter(lambda value: "," not in value), max_size=3),
)
signature_headers = st.none() | header_text | structured_headers


def post(client: FlaskClient, body: bytes, header: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return client.post("/webhooks/stripe", data=body, headers=headers).status_code


@FUZZ
@given(body=bodies, header=signature_headers)
@example(body=json.dumps(current_event("customer.created", {"id": "cus_x"}, event_id="evt_x", created=1)).encode(),
         header="t=1,v1=" + "0" * 64)  # fmt: skip
def test_unsigned_garbage_is_refused_and_nothing_is_stored(
    client: FlaskClient, db: Database, body: bytes, header: str | None
) -> None:
    assert post(client, body, header) in (400, 413)
    assert stored_ids(db) == []


event_fields = st.fixed_dictionaries(
    {},
    optional={
        "object": st.sampled_from(["event", "Event", ""]) | json_values,
        "id": st.text(max_size=300) | json_values,
        "type": st.sampled_from(["customer.subscription.updated", "invoice.paid", "x" * 300]) | st.text() | json_values,
        "created": st.integers(-(2**64), 2**64) | json_values,
        "livemode": st.booleans() | json_values,
        "data": st.fixed_dictionaries({"object": json_values}) | json_values,
        "api_version": json_values,
    },
)


@FUZZ
@given(document=event_fields)
def test_signed_but_malformed_events_get_400_or_are_stored_once(
    client: FlaskClient, db: Database, document: dict[str, Any]
) -> None:
    body = json.dumps(document).encode()
    before = len(stored_ids(db))
    status = post(client, body, signature_header(body))
    assert status in (200, 400)
    stored_now = len(stored_ids(db)) - before
    assert stored_now <= 1
    if status == 400:
        assert stored_now == 0


def test_the_wrong_secret_is_refused(client: FlaskClient, db: Database) -> None:
    [event] = many_customers(1)[:1]
    body, headers = signed(event, secret="whsec_someone_else")
    response = client.post("/webhooks/stripe", data=body, headers=headers)
    assert (response.status_code, response.get_json()) == (400, {"error": "signature does not match"})
    assert stored_ids(db) == []


def test_a_replayed_old_signature_is_refused(client: FlaskClient, db: Database) -> None:
    [event] = many_customers(1)[:1]
    body, headers = signed(event, timestamp=int(time.time()) - 301)
    response = client.post("/webhooks/stripe", data=body, headers=headers)
    assert response.status_code == 400
    assert "tolerance" in response.get_json()["error"]
    assert stored_ids(db) == []


def test_a_replayed_fresh_delivery_is_stored_once(client: FlaskClient, db: Database) -> None:
    [event] = many_customers(1)[:1]
    body, headers = signed(event)
    for _ in range(3):
        assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    assert stored_ids(db) == [event["id"]]


def test_a_signature_over_a_different_body_is_refused(client: FlaskClient, db: Database) -> None:
    first, second = many_customers(1)[:2]
    _, headers = signed(first)
    assert client.post("/webhooks/stripe", data=json.dumps(second), headers=headers).status_code == 400
    assert stored_ids(db) == []


def test_bodies_over_1_mib_get_413_signed_or_not(client: FlaskClient, db: Database) -> None:
    [event] = many_customers(1)[:1]
    event["data"]["object"]["metadata"] = {"padding": "x" * MAX_BODY_BYTES}
    body = json.dumps(event).encode()
    for header in (None, signature_header(body), signature_header(body, secret=WEBHOOK_SECRET + "x")):
        assert post(client, body, header) == 413
    assert post(client, b"x" * (MAX_BODY_BYTES + 1), None) == 413
    assert stored_ids(db) == []
