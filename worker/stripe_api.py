"""The one way subledger talks to the Stripe API.

Built on the official SDK's `StripeClient` (requests transport), honouring
STRIPE_API_BASE. Every request names its API version (`Stripe-Version`:
STRIPE_API_VERSION), so the shapes read stay those the project is written for
whatever SDK release is installed: the SDK's own default moves with it. The SDK retries network errors and 5xx itself
(`max_network_retries`) but not a 429 without Stripe-Should-Retry, and it
ignores Retry-After; this module waits as long as Stripe asks and tries again.
Objects come back as plain JSON dicts, exactly as Stripe sent them, so the
MRR rules read API objects and webhook payloads alike.

Every request first waits for the shared rate limit (`worker.ratelimit`): the
`throttle` hook, given the request's path, which by default draws from the
buckets every process of this deployment shares.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import stripe

from ledger import jsoncodec
from ledger.errors import SubledgerError
from ledger.settings import Settings
from worker.ratelimit import stripe_limiter

log = logging.getLogger("subledger.stripe")

MAX_NETWORK_RETRIES = 3
"""SDK-level retries of network errors, 409 and 5xx (with its own back-off)."""

MAX_RATE_LIMIT_RETRIES = 6
"""429 answers waited out before giving up."""

DEFAULT_RATE_LIMIT_WAIT_S = 1.0
"""Wait after a 429 that names no Retry-After (doubles each time)."""

PAGE_SIZE = 100
"""Stripe's largest page."""

SUBSCRIPTION_EXPANSIONS = ("discounts", "items.data.discounts", "items.data.price.tiers")
"""What the MRR rules need whole: webhooks carry these as ids, or not at all (tiers)."""

ITEM_EXPANSIONS = ("data.discounts", "data.price.tiers")
"""The same, for the items read from `/v1/subscription_items`."""


class StripeUnavailable(SubledgerError, RuntimeError):
    """Stripe could not be reached or refused the request; the message says why."""


class NoSuchObject(StripeUnavailable):
    """Stripe answered 404: it has no such object (never had, or deleted it)."""


class ParameterRefused(StripeUnavailable):
    """Stripe answered 400 naming a parameter of the request: it does not take it (here, or at all)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param
        """The parameter's name without its keys: `created` for `created[gte]`."""


_REFUSED_PARAMETER = re.compile(r"^(?:Unexpected|Received unknown parameter:)\s+([\w\[\].]+)")
"""How Stripe ("Received unknown parameter: x") and stand-ins such as localstripe ("Unexpected x")
name a parameter they refuse when the error carries no `param`."""


def _refused_parameter(exc: stripe.InvalidRequestError) -> str | None:
    """The root name of the parameter a 400 answer refuses, if it names one."""
    if exc.http_status != 400:
        return None
    named = exc.param if isinstance(exc.param, str) and exc.param else None
    if named is None:
        found = _REFUSED_PARAMETER.match(exc.user_message or "")
        named = found[1] if found else None
    return named.split("[", 1)[0] if named else None


class StripeAPI:
    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        throttle: Callable[[str], None] | None = None,
    ) -> None:
        """`throttle(path)` is called before each request; default: `worker.ratelimit.stripe_limiter`."""
        if not settings.stripe_api_key:
            raise StripeUnavailable("STRIPE_API_KEY is not set")
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self.api_version = settings.stripe_api_version
        """The `Stripe-Version` every request sends."""
        self.client = stripe.StripeClient(
            settings.stripe_api_key,
            stripe_version=self.api_version,
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=MAX_NETWORK_RETRIES,
            http_client=stripe.RequestsClient(),
        )
        self._sleep = sleep
        self._throttle = throttle if throttle is not None else stripe_limiter(settings)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        """GET an API path; the JSON answer as a dict."""
        wait = DEFAULT_RATE_LIMIT_WAIT_S
        for attempt in range(MAX_RATE_LIMIT_RETRIES + 1):
            self._throttle(path)
            try:
                return self._get_once(path, params)
            except stripe.RateLimitError as exc:
                if attempt == MAX_RATE_LIMIT_RETRIES:
                    raise StripeUnavailable(f"Stripe kept answering 429 to GET {path}") from None
                retry_after = _retry_after(exc.headers)
                delay = wait if retry_after is None else retry_after
                log.warning("Stripe rate limit; waiting", extra={"path": path, "wait_s": delay})
                self._sleep(delay)
                wait *= 2
                continue
            except stripe.InvalidRequestError as exc:
                message = f"Stripe refused GET {path}: {exc.user_message or exc.http_status}"
                param = _refused_parameter(exc)
                if param is not None:
                    raise ParameterRefused(message, param) from None
                raise (NoSuchObject if exc.http_status == 404 else StripeUnavailable)(message) from None
            except stripe.AuthenticationError:
                raise StripeUnavailable("Stripe rejected STRIPE_API_KEY") from None
            except stripe.StripeError as exc:
                raise StripeUnavailable(f"Stripe error on GET {path}: {type(exc).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_once(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One GET through the SDK's transport (key, API version, network retries), its answer parsed once.

        `StripeClient.raw_request` parses every answer into OrderedDicts, the slowest
        of Python's JSON readers, and a backfill reads hundreds of thousands of
        objects: a success is read by `ledger.jsoncodec`; any other answer goes
        through the SDK's own interpretation, which raises its error for the status.
        """
        requestor = self.client._requestor
        body, status, headers = requestor.request_raw(
            "get", path, params=params, options={}, base_address="api", api_mode="V1", usage=["raw_request"]
        )
        if 200 <= status < 300:
            try:
                document = jsoncodec.loads(cast(str | bytes, body))
            except ValueError:
                document = None
            if not isinstance(document, dict):
                raise StripeUnavailable(f"Stripe answered GET {path} with something other than a JSON object")
            return document
        requestor._interpret_response(body, status, headers, "V1")
        raise StripeUnavailable(f"Stripe answered GET {path} with HTTP {status}")

    def pages(
        self, path: str, *, starting_after: str | None = None, limit: int = PAGE_SIZE, **params: Any
    ) -> Iterator[list[dict[str, Any]]]:
        """A list endpoint page by page (Stripe's cursor pagination), from after `starting_after`.

        Streams: one page in memory at a time. The caller checkpoints the last
        id of each page it has committed and passes it back to resume.
        """
        cursor = starting_after
        while True:
            query = dict(params, limit=limit)
            if cursor is not None:
                query["starting_after"] = cursor
            page = self.get(path, **query)
            data: list[dict[str, Any]] = page.get("data") or []
            if data:
                yield data
                cursor = str(data[-1]["id"])
            if not page.get("has_more") or not data:
                return

    def list(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every object of a list endpoint, one at a time."""
        for page in self.pages(path, **params):
            yield from page

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        """A subscription with what the MRR rules need expanded, every item included."""
        return self.with_every_item(
            self.get(f"/v1/subscriptions/{subscription_id}", expand=list(SUBSCRIPTION_EXPANSIONS))
        )

    def subscription_items(
        self, subscription_id: str, *, starting_after: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """A subscription's items, from after `starting_after` (all of them without)."""
        for page in self.pages(
            "/v1/subscription_items",
            starting_after=starting_after,
            subscription=subscription_id,
            expand=list(ITEM_EXPANSIONS),
        ):
            yield from page

    def with_every_item(self, subscription: dict[str, Any]) -> dict[str, Any]:
        """`subscription` with its whole item list: Stripe embeds the first 20 (`has_more`), the rest are paged."""
        items = subscription.get("items")
        if not isinstance(items, Mapping) or not items.get("has_more"):
            return subscription
        data = list(items.get("data") or [])
        last = str(data[-1]["id"]) if data else None
        data.extend(self.subscription_items(str(subscription["id"]), starting_after=last))
        every = dict(items, data=data, has_more=False)
        if "total_count" in every:
            every["total_count"] = len(data)
        subscription["items"] = every
        return subscription

    def price(self, price_id: str) -> dict[str, Any]:
        return self.get(f"/v1/prices/{price_id}", expand=["tiers"])

    def coupon(self, coupon_id: str) -> dict[str, Any]:
        """A coupon read with `applies_to` expanded.

        The answer always carries the key, so the coupon counts as read: Stripe
        includes an expanded field, and an answer without it (a proxy or fake
        that ignores `expand`) has nothing to restrict the coupon with (null:
        every item). Otherwise the coupon would be fetched again and again.
        """
        coupon = self.get(f"/v1/coupons/{coupon_id}", expand=["applies_to"])
        coupon.setdefault("applies_to", None)
        return coupon


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(float(value), 0.0)
            except ValueError:
                return None
    return None
