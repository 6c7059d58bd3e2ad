"""The Stripe client: base URL, retries, rate limits, errors — against Stripe's HTTP API simulated by `responses`."""

from __future__ import annotations

import pytest
import requests
import responses

from ledger.settings import DEFAULT_STRIPE_API_VERSION, Settings
from worker.stripe_api import (
    MAX_NETWORK_RETRIES,
    MAX_RATE_LIMIT_RETRIES,
    NoSuchObject,
    ParameterRefused,
    StripeAPI,
    StripeUnavailable,
)

BASE = "https://stripe.test"


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def api(waits: list[float]) -> StripeAPI:
    return StripeAPI(Settings(stripe_api_key="sk_test_subledger", stripe_api_base=BASE), sleep=waits.append)


@responses.activate
def test_requests_go_to_stripe_api_base_with_the_key_and_expansions(api: StripeAPI) -> None:
    responses.get(f"{BASE}/v1/subscriptions/sub_1", json={"id": "sub_1", "object": "subscription"})
    assert api.subscription("sub_1") == {"id": "sub_1", "object": "subscription"}
    [call] = responses.calls
    assert call.request.headers["Authorization"] == "Bearer sk_test_subledger"
    assert "expand%5B0%5D=discounts" in call.request.url
    assert "items.data.price.tiers" in call.request.url


@responses.activate
def test_429_waits_as_long_as_retry_after_says(api: StripeAPI, waits: list[float]) -> None:
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    responses.get(f"{BASE}/v1/prices/price_1", status=429, json=limited, headers={"Retry-After": "3"})
    responses.get(f"{BASE}/v1/prices/price_1", json={"id": "price_1", "tiers": []})
    assert api.price("price_1")["id"] == "price_1"
    assert waits == [3.0]


@responses.activate
def test_429_without_retry_after_backs_off_and_finally_gives_up(api: StripeAPI, waits: list[float]) -> None:
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    responses.get(f"{BASE}/v1/coupons/HALF", status=429, json=limited)
    with pytest.raises(StripeUnavailable, match="kept answering 429"):
        api.coupon("HALF")
    assert waits == [1.0 * 2**n for n in range(MAX_RATE_LIMIT_RETRIES)]


@responses.activate
def test_5xx_is_retried_by_the_sdk(api: StripeAPI) -> None:
    responses.get(f"{BASE}/v1/coupons/HALF", status=500, json={"error": {"type": "api_error", "message": "boom"}})
    responses.get(f"{BASE}/v1/coupons/HALF", json={"id": "HALF"})
    assert api.coupon("HALF")["id"] == "HALF"
    assert len(responses.calls) == 2


@responses.activate
def test_a_rejected_key_is_one_clear_error_without_the_key(api: StripeAPI) -> None:
    denied = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****ger"}}
    responses.get(f"{BASE}/v1/subscriptions/sub_1", status=401, json=denied)
    with pytest.raises(StripeUnavailable) as caught:
        api.subscription("sub_1")
    assert str(caught.value) == "Stripe rejected STRIPE_API_KEY"


@responses.activate
def test_an_unknown_object_names_the_path(api: StripeAPI) -> None:
    missing = {"error": {"type": "invalid_request_error", "message": "No such price: 'price_x'"}}
    responses.get(f"{BASE}/v1/prices/price_x", status=404, json=missing)
    with pytest.raises(StripeUnavailable, match="/v1/prices/price_x"):
        api.price("price_x")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param({"type": "invalid_request_error", "message": "Unexpected created"}, id="localstripe"),
        pytest.param(
            {
                "type": "invalid_request_error",
                "code": "parameter_unknown",
                "param": "created[gte]",
                "message": "Received unknown parameter: created[gte]",
            },
            id="Stripe",
        ),
    ],
)
@responses.activate
def test_a_refused_parameter_is_named(api: StripeAPI, error: dict[str, str]) -> None:
    responses.get(f"{BASE}/v1/customers", status=400, json={"error": error})
    with pytest.raises(ParameterRefused) as caught:
        api.get("/v1/customers", created={"gte": 1})
    assert caught.value.param == "created"
    assert str(caught.value).startswith("Stripe refused GET /v1/customers: ")


@responses.activate
def test_a_400_naming_no_parameter_is_a_plain_refusal(api: StripeAPI) -> None:
    responses.get(
        f"{BASE}/v1/customers", status=400, json={"error": {"type": "invalid_request_error", "message": "No"}}
    )
    with pytest.raises(StripeUnavailable) as caught:
        api.get("/v1/customers")
    assert not isinstance(caught.value, (ParameterRefused, NoSuchObject))


@responses.activate
def test_a_subscription_gets_the_items_stripe_did_not_embed(api: StripeAPI) -> None:
    items = [{"id": f"si_{n:02d}", "object": "subscription_item"} for n in range(25)]
    cut = {"object": "list", "data": items[:20], "has_more": True, "total_count": 25}
    responses.get(f"{BASE}/v1/subscriptions/sub_1", json={"id": "sub_1", "object": "subscription", "items": cut})
    responses.get(f"{BASE}/v1/subscription_items", json={"object": "list", "data": items[20:], "has_more": False})
    found = api.subscription("sub_1")
    assert found["items"] == {"object": "list", "data": items, "has_more": False, "total_count": 25}
    paged = responses.calls[1].request.url
    for part in ("subscription=sub_1", "limit=100", "starting_after=si_19", "data.discounts", "data.price.tiers"):
        assert part in paged


def test_no_key_no_client() -> None:
    with pytest.raises(StripeUnavailable, match="STRIPE_API_KEY is not set"):
        StripeAPI(Settings())


@responses.activate
def test_pages_follow_the_cursor_until_has_more_is_false(api: StripeAPI) -> None:
    first = {"object": "list", "data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": True}
    second = {"object": "list", "data": [{"id": "cus_3"}], "has_more": False}
    responses.get(f"{BASE}/v1/customers", json=first)
    responses.get(f"{BASE}/v1/customers", json=second)
    assert [c["id"] for c in api.list("/v1/customers")] == ["cus_1", "cus_2", "cus_3"]
    assert "starting_after=cus_2" in responses.calls[1].request.url
    assert "limit=100" in responses.calls[0].request.url


@responses.activate
def test_a_network_error_is_retried_by_the_sdk(api: StripeAPI) -> None:
    responses.get(f"{BASE}/v1/prices/price_1", body=requests.ConnectionError("connection reset by peer"))
    responses.get(f"{BASE}/v1/prices/price_1", json={"id": "price_1"})
    assert api.price("price_1") == {"id": "price_1"}
    assert len(responses.calls) == 2


@responses.activate
def test_network_errors_past_the_retries_are_one_clear_error(api: StripeAPI) -> None:
    responses.get(f"{BASE}/v1/prices/price_1", body=requests.ConnectionError("connection reset by peer"))
    with pytest.raises(StripeUnavailable, match="APIConnectionError"):
        api.price("price_1")
    assert len(responses.calls) == 1 + MAX_NETWORK_RETRIES


@responses.activate
def test_each_request_first_waits_for_the_rate_limit_of_its_path(waits: list[float]) -> None:
    paths: list[str] = []
    settings = Settings(stripe_api_key="sk_test_subledger", stripe_api_base=BASE)
    api = StripeAPI(settings, sleep=waits.append, throttle=paths.append)
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    responses.get(f"{BASE}/v1/invoices/in_1/lines", status=429, json=limited, headers={"Retry-After": "0"})
    responses.get(f"{BASE}/v1/invoices/in_1/lines", json={"object": "list", "data": [], "has_more": False})
    assert list(api.list("/v1/invoices/in_1/lines")) == []
    assert paths == ["/v1/invoices/in_1/lines"] * 2
    assert waits == [0.0]  # Retry-After: 0 means now


@responses.activate
def test_every_request_names_the_configured_api_version_not_the_sdks(api: StripeAPI) -> None:
    """Retries and pages included: an SDK upgrade must not change the shapes read."""
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    responses.get(f"{BASE}/v1/subscriptions/sub_1", status=429, json=limited, headers={"Retry-After": "0"})
    responses.get(f"{BASE}/v1/subscriptions/sub_1", json={"id": "sub_1", "object": "subscription"})
    responses.get(f"{BASE}/v1/prices/price_1", status=500, json={"error": {"type": "api_error", "message": "boom"}})
    responses.get(f"{BASE}/v1/prices/price_1", json={"id": "price_1"})
    responses.get(f"{BASE}/v1/coupons/HALF", json={"id": "HALF"})
    responses.get(f"{BASE}/v1/customers", json={"object": "list", "data": [{"id": "cus_1"}], "has_more": True})
    responses.get(f"{BASE}/v1/customers", json={"object": "list", "data": [{"id": "cus_2"}], "has_more": False})
    api.subscription("sub_1")
    api.price("price_1")
    api.coupon("HALF")
    list(api.list("/v1/customers"))
    assert len(responses.calls) == 7
    assert [call.request.headers.get("Stripe-Version") for call in responses.calls] == [DEFAULT_STRIPE_API_VERSION] * 7


@responses.activate
def test_stripe_api_version_is_what_requests_name() -> None:
    """Whatever the installed SDK defaults to."""
    settings = Settings(stripe_api_key="sk_test_subledger", stripe_api_base=BASE, stripe_api_version="2020-03-02")
    responses.get(f"{BASE}/v1/prices/price_1", json={"id": "price_1"})
    api = StripeAPI(settings)
    api.price("price_1")
    assert api.api_version == "2020-03-02"
    assert responses.calls[0].request.headers["Stripe-Version"] == "2020-03-02"
