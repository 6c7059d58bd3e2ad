"""A local fake of the Stripe API's read side, for benchmarks: Stripe's shapes, pagination and rate limits.

    python bench/fake_stripe.py [--port 12111] [--customers 15000] [--subscriptions 20000]
                                [--invoices 200000] [--latency 0.1] [--seed 7]
    python bench/fake_stripe.py --self-check

Serves the synthetic account of `bench/synthetic_stripe.py` (objects rendered
from their index on each request, so memory stays flat):

- `GET /v1/{customers,products,prices,coupons,subscriptions,invoices}`: newest
  first, `limit` (1–100, default 10), `starting_after` / `ending_before`,
  `created` (exact, or `[gt]`/`[gte]`/`[lt]`/`[lte]`), `expand[]`; subscriptions
  without `status` leave out canceled ones (`status=all`, or one status);
  prices without `active` are the active ones only, as Stripe lists them.
- `GET /v1/invoices/{id}/lines`; each invoice embeds its first 10 lines.
- `GET /v1/invoiceitems?pending=true`: none, unless a subclass's account has
  an `invoiceitems` collection; every proration of this account is on an invoice.
- `GET /v1/{kind}/{id}` (and `/v1/account`); unknown ids answer a Stripe 404.
- `expand[]` as Stripe does it: ids become objects (`discounts`,
  `source.coupon`, `customer`, …), includable fields appear (`tiers`,
  `applies_to`), anything else is a 400, as is a path of more than four
  levels (a list's leading `data.` not counted).
- `Authorization: Bearer sk_…`/`rk_…` or 401; unknown parameters are a 400.
- Every request waits `--latency` seconds. Stripe's live-mode limits: 100
  requests in any one second, 25 per endpoint (the path with ids as `*`);
  past either, 429 `rate_limit_error` without Retry-After. A refused request
  does not count toward the window.
- `GET /__stats`: per endpoint requests, 429s, pages, objects served; no auth,
  no limit. `POST /__reset` zeroes them.

`--port 0` picks a free port; the first line on stdout is the base URL.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import re
import secrets
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_stripe import (
    CANCELED,
    LINES_EMBEDDED,
    STATUSES,
    Account,
    Sizes,
    customer_id,
    invoice_id,
    rank_of,
    subscription_id,
)

GLOBAL_LIMIT = 100
"""Stripe live mode: requests per second for the account."""

ENDPOINT_LIMIT = 25
"""Stripe: requests per second on one endpoint, unless documented otherwise."""

MAX_EXPAND_DEPTH = 4
"""Stripe expands four levels at most."""

EXPANDABLE: dict[str, frozenset[str]] = {
    "account": frozenset(),
    "customer": frozenset(
        {"default_source", "invoice_settings.default_payment_method", "test_clock", "subscriptions", "tax_ids"}
    ),
    "product": frozenset({"default_price", "tax_code"}),
    "price": frozenset({"product", "tiers", "currency_options"}),
    "coupon": frozenset({"applies_to", "currency_options"}),
    "discount": frozenset({"customer", "promotion_code", "source.coupon"}),
    "subscription": frozenset(
        {
            "customer",
            "default_payment_method",
            "default_source",
            "discounts",
            "latest_invoice",
            "on_behalf_of",
            "pending_setup_intent",
            "schedule",
            "test_clock",
            "application",
        }
    ),
    "subscription_item": frozenset({"discounts", "price"}),
    "invoice": frozenset(
        {
            "customer",
            "default_payment_method",
            "default_source",
            "discounts",
            "latest_revision",
            "on_behalf_of",
            "test_clock",
            "account_tax_ids",
            "application",
            "total_discount_amounts.discount",
            "parent.subscription_details.subscription",
        }
    ),
    "line_item": frozenset({"discounts", "discount_amounts.discount", "pricing.price_details.price"}),
}
"""Fields `expand[]` may name, per object type (dotted below a plain hash of that object)."""

LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand", "created"})
FILTERS: dict[str, frozenset[str]] = {
    "customers": frozenset(),
    "products": frozenset({"active"}),
    "prices": frozenset({"active", "product"}),
    "coupons": frozenset(),
    "subscriptions": frozenset({"status", "customer"}),
    "invoices": frozenset({"status", "customer", "subscription"}),
    "events": frozenset({"type", "types", "delivery_success"}),
    "subscription_items": frozenset({"subscription"}),
    "invoiceitems": frozenset({"customer", "invoice", "pending"}),
}
"""Filters the fake implements beyond pagination; Stripe's others answer 400 here."""


class StripeError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, **extra}}


@dataclass
class EndpointStats:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0
    pages: int = 0
    objects: int = 0
    bytes: int = 0
    peak_per_s: int = 0


@dataclass
class Stats:
    started: float = field(default_factory=time.time)
    first_request: float | None = None
    last_request: float | None = None
    peak_per_s: int = 0
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        totals = EndpointStats()
        for entry in self.endpoints.values():
            for name in ("requests", "ok", "rate_limited", "errors", "pages", "objects", "bytes"):
                setattr(totals, name, getattr(totals, name) + getattr(entry, name))
        totals.peak_per_s = self.peak_per_s
        return {
            "first_request": self.first_request,
            "last_request": self.last_request,
            "total": vars(totals),
            "endpoints": {name: vars(entry) for name, entry in sorted(self.endpoints.items())},
        }


class SlidingWindow:
    """Requests admitted in the last second, for the account and per endpoint."""

    def __init__(self, global_limit: int, endpoint_limit: int) -> None:
        self.global_limit = global_limit
        self.endpoint_limit = endpoint_limit
        self._global: deque[float] = deque()
        self._endpoints: dict[str, deque[float]] = {}

    def admit(self, endpoint: str, now: float) -> tuple[bool, int, int]:
        """Admit one request (True) or refuse it; and the window sizes after it."""
        horizon = now - 1.0
        mine = self._endpoints.setdefault(endpoint, deque())
        for window in (self._global, mine):
            while window and window[0] <= horizon:
                window.popleft()
        if len(self._global) >= self.global_limit or len(mine) >= self.endpoint_limit:
            return False, len(self._global), len(mine)
        self._global.append(now)
        mine.append(now)
        return True, len(self._global), len(mine)


def endpoint_of(path: str) -> str:
    """`/v1/invoices/in_1/lines` → `/v1/invoices/*/lines`: Stripe limits per endpoint, not per object."""
    parts = path.strip("/").split("/")
    return "/" + "/".join("*" if position % 2 == 0 and position > 0 else part for position, part in enumerate(parts))


class Query:
    """A request's query string, Stripe style: `expand[]`, `expand[0]`, `created[gte]`."""

    def __init__(self, raw: str) -> None:
        self.scalars: dict[str, str] = {}
        self.expand: list[str] = []
        self.types: list[str] = []
        self.created: dict[str, int] = {}
        for key, value in parse_qsl(raw, keep_blank_values=True):
            if key == "expand" or re.fullmatch(r"expand\[\d*\]", key):
                self.expand.append(value)
            elif re.fullmatch(r"types\[\d*\]", key):
                self.types.append(value)
            elif key == "created" or key.startswith("created["):
                operator = key[8:-1] if key != "created" else "eq"
                if operator not in ("eq", "gt", "gte", "lt", "lte"):
                    raise StripeError(400, f"Received unknown parameter: {key}", param=key)
                if not value.lstrip("-").isdigit():
                    raise StripeError(400, f"Invalid integer: {value}", param=key, code="parameter_invalid_integer")
                self.created[operator] = int(value)
            elif key in self.scalars:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
            else:
                self.scalars[key] = value

    def check(self, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for key in self.scalars:
            if key not in allowed:
                raise StripeError(400, f"Received unknown parameter: {key}", param=key)
        if self.created and "created" not in allowed:
            raise StripeError(400, "Received unknown parameter: created", param="created")
        if self.types and "types" not in allowed:
            raise StripeError(400, "Received unknown parameter: types", param="types")

    def limit(self) -> int:
        raw = self.scalars.get("limit", "10")
        if not raw.isdigit():
            raise StripeError(400, f"Invalid integer: {raw}", param="limit", code="parameter_invalid_integer")
        limit = int(raw)
        if not 1 <= limit <= 100:
            raise StripeError(400, "This value must be between 1 and 100.", param="limit", code="parameter_invalid")
        return limit


@dataclass
class Collection:
    """A list endpoint over objects kept in ascending `created` order; served newest first."""

    name: str
    prefix: str | None
    count: int
    created: Sequence[int]
    render: Callable[[int], dict[str, Any]]
    id_of: Callable[[int], str]
    rank: Callable[[str], int | None]
    raw: Callable[[int], dict[str, Any]] | None = None
    """The object as kept, for filters (rendering copies it)."""


class FakeStripe:
    """Everything but HTTP: route a GET, answer (status, JSON body); counts and limits."""

    def __init__(
        self,
        account: Account,
        *,
        latency: float = 0.1,
        global_limit: int = GLOBAL_LIMIT,
        endpoint_limit: int = ENDPOINT_LIMIT,
    ) -> None:
        self.account = account
        self.latency = latency
        self.window = SlidingWindow(global_limit, endpoint_limit)
        self.stats = Stats()
        self.lock = threading.Lock()
        a = account
        products = a.products
        prices = a.prices
        coupons = sorted(a.coupons, key=lambda coupon: coupon["created"])
        self.collections = {
            "customers": Collection(
                "customers",
                "cus_",
                len(a.customer_created),
                a.customer_created,
                a.customer,
                customer_id,
                lambda i: rank_of(i, "cus_", len(a.customer_created)),
            ),
            "subscriptions": Collection(
                "subscriptions",
                "sub_",
                a.sizes.subscriptions,
                a.sub_created,
                a.subscription,
                subscription_id,
                lambda i: rank_of(i, "sub_", a.sizes.subscriptions),
            ),
            "invoices": Collection(
                "invoices",
                "in_",
                a.invoice_count,
                a.invoice_created,
                a.invoice,
                invoice_id,
                lambda i: rank_of(i, "in_", a.invoice_count),
            ),
            "products": _catalog("products", products),
            "prices": _catalog("prices", prices),
            "coupons": _catalog("coupons", coupons),
        }
        self.account_object = {
            "id": "acct_fakestripe0001",
            "object": "account",
            "business_profile": {"name": "Synthetic SaaS Inc."},
            "charges_enabled": True,
            "country": "US",
            "created": a.origin - 60 * 86_400,
            "default_currency": "usd",
            "details_submitted": True,
            "email": "owner@synthetic.example",
            "metadata": {},
            "payouts_enabled": True,
            "type": "standard",
        }

    # --- the request path -----------------------------------------------------------------------

    def handle(self, method: str, target: str, authorization: str | None) -> tuple[int, bytes]:
        """One request, start to end: (status, body). Sleeps the latency; counts it."""
        started = time.monotonic()
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        if path == "/__stats":
            with self.lock:
                return 200, json.dumps(self.stats.as_json()).encode()
        if path == "/__reset" and method == "POST":
            with self.lock:
                self.stats = Stats()
            return 200, b'{"reset": true}'
        endpoint = endpoint_of(path)
        objects, pages = 0, 0
        try:
            self._authenticate(authorization)
            with self.lock:
                admitted, global_now, endpoint_now = self.window.admit(endpoint, started)
                self._count_arrival(endpoint, started, global_now, endpoint_now if admitted else 0)
            if not admitted:
                raise StripeError(
                    429,
                    "Request rate limit exceeded. Learn more about rate limits here "
                    "https://stripe.com/docs/rate-limits.",
                    kind="rate_limit_error",
                    code="rate_limit",
                )
            if method != "GET":
                raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
            body, objects, pages = self._route(path, Query(split.query))
            status = 200
        except StripeError as exc:
            status, body = exc.status, exc.body
        # orjson: the fake shares the machine with the backfill it serves, so its CPU is kept small.
        payload = orjson.dumps(body)
        wait = self.latency - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)
        with self.lock:
            entry = self.stats.endpoints.setdefault(endpoint, EndpointStats())
            entry.bytes += len(payload)
            if status == 200:
                entry.ok += 1
                entry.objects += objects
                entry.pages += pages
            elif status == 429:
                entry.rate_limited += 1
            else:
                entry.errors += 1
        return status, payload

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not re.fullmatch(r"(sk|rk)_(live|test)_\w+", key.strip()):
            shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else key
            raise StripeError(401, f"Invalid API Key provided: {shown}")

    def _count_arrival(self, endpoint: str, now: float, global_now: int, endpoint_now: int) -> None:
        wall = time.time()
        stats = self.stats
        stats.first_request = stats.first_request or wall
        stats.last_request = wall
        stats.peak_per_s = max(stats.peak_per_s, global_now)
        entry = stats.endpoints.setdefault(endpoint, EndpointStats())
        entry.requests += 1
        entry.peak_per_s = max(entry.peak_per_s, endpoint_now)

    def _route(self, path: str, query: Query) -> tuple[dict[str, Any], int, int]:
        """(body, objects served, pages served)."""
        parts = path.strip("/").split("/")
        if parts[0] != "v1" or len(parts) < 2:
            raise StripeError(404, f"Unrecognized request URL (GET: {path}).")
        kind = parts[1]
        if kind == "account" and len(parts) == 2:
            query.check(["expand"])
            return self._expanded(dict(self.account_object), query.expand, is_list=False), 1, 0
        collection = self.collections.get(kind)
        if collection is None and kind == "invoiceitems" and len(parts) == 2:  # an account with none
            query.check(LIST_PARAMS | {"pending"})
            return {"object": "list", "data": [], "has_more": False, "url": "/v1/invoiceitems"}, 0, 1
        if collection is None:
            raise StripeError(404, f"Unrecognized request URL (GET: {path}).")
        if len(parts) == 2:
            query.check(LIST_PARAMS | FILTERS[kind])
            body = self._list(collection, query)
            return self._expanded(body, query.expand, is_list=True), len(body["data"]), 1
        object_id = parts[2]
        rank = collection.rank(object_id)
        if rank is None:
            raise StripeError(
                404,
                f"No such {kind[:-1]}: '{object_id}'",
                code="resource_missing",
                param="id",
                doc_url="https://stripe.com/docs/error-codes/resource-missing",
            )
        if len(parts) == 3:
            query.check(["expand"])
            return self._expanded(collection.render(rank), query.expand, is_list=False), 1, 0
        if kind == "invoices" and len(parts) == 4 and parts[3] == "lines":
            query.check(["limit", "starting_after", "ending_before", "expand"])
            body = self._lines(rank, query)
            return self._expanded(body, query.expand, is_list=True), len(body["data"]), 1
        raise StripeError(404, f"Unrecognized request URL (GET: {path}).")

    # --- lists ----------------------------------------------------------------------------------

    def _list(self, collection: Collection, query: Query) -> dict[str, Any]:
        """A page, newest first: ranks from `high` down, within the `created` filter, matching filters."""
        limit = query.limit()
        low, high = 0, collection.count  # ranks [low, high) pass the created filter
        created = collection.created
        for operator, value in query.created.items():
            if operator == "eq":
                low, high = max(low, bisect_left(created, value)), min(high, bisect_right(created, value))
            elif operator == "gt":
                low = max(low, bisect_right(created, value))
            elif operator == "gte":
                low = max(low, bisect_left(created, value))
            elif operator == "lt":
                high = min(high, bisect_left(created, value))
            elif operator == "lte":
                high = min(high, bisect_right(created, value))
        keep = self._filter(collection.name, query)
        candidates = self._candidates(collection.name, query)
        after, before = query.scalars.get("starting_after"), query.scalars.get("ending_before")
        if after is not None and before is not None:
            raise StripeError(400, "You may only specify one of these parameters: starting_after, ending_before.")
        url = f"/v1/{collection.name}"
        if before is not None:
            cursor = self._cursor(collection, before, "ending_before")
            ranks: list[int] = []
            for rank in _ascending(candidates, max(cursor + 1, low), high):
                if len(ranks) > limit:
                    break
                if keep is None or keep(rank):
                    ranks.append(rank)
            more = len(ranks) > limit
            page = sorted(ranks[:limit], reverse=True)
        else:
            top = high - 1
            if after is not None:
                top = min(top, self._cursor(collection, after, "starting_after") - 1)
            page = []
            for rank in _descending(candidates, top, low):
                if len(page) > limit:
                    break
                if keep is None or keep(rank):
                    page.append(rank)
            more = len(page) > limit
            page = page[:limit]
        return {
            "object": "list",
            "data": [collection.render(rank) for rank in page],
            "has_more": more,
            "url": url,
        }

    def _candidates(self, kind: str, query: Query) -> Sequence[int] | None:
        """Ascending ranks that may match the query's filters (None: any); `_filter` still decides."""
        return None

    def _cursor(self, collection: Collection, object_id: str, param: str) -> int:
        rank = collection.rank(object_id)
        if rank is None:
            raise StripeError(
                400,
                f"No such {collection.name[:-1]}: '{object_id}'",
                code="resource_missing",
                param=param,
            )
        return rank

    def _filter(self, kind: str, query: Query) -> Callable[[int], bool] | None:
        a = self.account
        status = query.scalars.get("status")
        customer = query.scalars.get("customer")
        if kind == "subscriptions":
            if status is None:
                wanted = {STATUSES[s] for s in range(len(STATUSES)) if s != CANCELED}
            elif status == "all":
                wanted = set(STATUSES)
            elif status in (*STATUSES, "unpaid", "incomplete", "incomplete_expired", "paused", "ended"):
                wanted = {"canceled"} if status == "ended" else {status}
            else:
                raise StripeError(400, f"Invalid status: must be one of {', '.join(STATUSES)}, all", param="status")
            owner = self._customer_rank(customer)
            return lambda rank: (
                a.subscription_status(rank) in wanted and (owner is None or a.sub_customer[rank] == owner)
            )
        if kind == "invoices":
            owner = self._customer_rank(customer)
            sub = query.scalars.get("subscription")
            sub_rank = rank_of(sub, "sub_", a.sizes.subscriptions) if sub is not None else None
            if sub is not None and sub_rank is None:
                return lambda rank: False
            if status is not None and status not in ("draft", "open", "paid", "uncollectible", "void"):
                raise StripeError(400, "Invalid status", param="status")
            if status is None and owner is None and sub_rank is None:
                return None

            def invoice_matches(rank: int) -> bool:
                sub_of = a.invoice_sub[rank]
                if owner is not None and a.sub_customer[sub_of] != owner:
                    return False
                if sub_rank is not None and sub_of != sub_rank:
                    return False
                return status is None or a.invoice(rank)["status"] == status

            return invoice_matches
        if kind in ("products", "prices"):
            active = query.scalars.get("active")
            if kind == "prices" and active is None:
                active = "true"  # Stripe lists active prices unless asked for inactive ones
            product = query.scalars.get("product")
            objects = self.collections[kind]
            return lambda rank: (
                (active is None or str(objects.render(rank)["active"]).lower() == active)
                and (product is None or objects.render(rank).get("product") == product)
            )
        return None

    def _customer_rank(self, customer: str | None) -> int | None:
        if customer is None:
            return None
        rank = rank_of(customer, "cus_", len(self.account.customer_created))
        return -1 if rank is None else rank

    def _lines(self, invoice: int, query: Query) -> dict[str, Any]:
        limit = query.limit()
        lines = self.account.lines(invoice)
        ids = [line["id"] for line in lines]
        start, end = 0, len(lines)
        if "starting_after" in query.scalars:
            start = self._line_index(ids, query.scalars["starting_after"]) + 1
            end = min(end, start + limit)
        elif "ending_before" in query.scalars:
            end = self._line_index(ids, query.scalars["ending_before"])
            start = max(0, end - limit)
        else:
            end = min(end, limit)
        more = end < len(lines) if "ending_before" not in query.scalars else start > 0
        return {
            "object": "list",
            "data": lines[start:end],
            "has_more": more,
            "url": f"/v1/invoices/{invoice_id(invoice)}/lines",
        }

    @staticmethod
    def _line_index(ids: list[str], line_id: str) -> int:
        try:
            return ids.index(line_id)
        except ValueError:
            raise StripeError(400, f"No such line item: '{line_id}'", code="resource_missing") from None

    # --- expansion ------------------------------------------------------------------------------

    def _expanded(self, body: dict[str, Any], paths: Sequence[str], *, is_list: bool) -> dict[str, Any]:
        for path in paths:
            parts = path.split(".")
            depth = len(parts) - 1 if is_list and parts[0] == "data" else len(parts)
            if depth > MAX_EXPAND_DEPTH:
                raise StripeError(
                    400,
                    f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property. Property: {path}",
                    param="expand",
                )
            self._expand(body, parts, None, "", path)
        return body

    def _expand(self, node: Any, parts: list[str], owner: str | None, relative: str, path: str) -> None:
        if isinstance(node, list):
            for element in node:
                self._expand(element, parts, owner, relative, path)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("object")
        if kind == "list":
            if parts[0] != "data":
                raise StripeError(400, f"This property cannot be expanded ({path}).", param="expand")
            if len(parts) > 1:
                self._expand(node["data"], parts[1:], None, "", path)
            return
        if isinstance(kind, str):
            owner, relative = kind, ""
        if owner is None:
            raise StripeError(400, f"This property cannot be expanded ({path}).", param="expand")
        segment, rest = parts[0], parts[1:]
        key = f"{relative}.{segment}" if relative else segment
        expandable = EXPANDABLE.get(owner, frozenset())
        if key in expandable:
            node[segment] = self._resolve(owner, segment, node)
            if rest:
                self._expand(node[segment], rest, owner, key, path)
        elif rest and isinstance(node.get(segment), dict | list):
            self._expand(node[segment], rest, owner, key, path)
        else:
            raise StripeError(400, f"This property cannot be expanded ({path}).", param="expand")

    def _resolve(self, owner: str, field_name: str, node: dict[str, Any]) -> Any:
        a = self.account
        value = node.get(field_name)
        if owner == "price" and field_name == "tiers":
            tiers = a.tiers.get(node["id"])
            return [dict(tier) for tier in tiers] if tiers is not None else value
        if owner == "coupon" and field_name == "applies_to":
            return a.coupon_applies_to(node["id"])
        if owner == "customer" and field_name == "subscriptions":
            rank = rank_of(node["id"], "cus_", len(a.customer_created))
            subs = a.subscriptions_of.get(rank, []) if rank is not None else []
            data = [a.subscription(s) for s in reversed(subs) if a.sub_status[s] != CANCELED][:10]
            return {
                "object": "list",
                "data": data,
                "has_more": False,
                "url": f"/v1/customers/{node['id']}/subscriptions",
            }
        if owner == "customer" and field_name == "tax_ids":
            return {"object": "list", "data": [], "has_more": False, "url": f"/v1/customers/{node['id']}/tax_ids"}
        if isinstance(value, list):
            return [self._object(entry) for entry in value]
        return self._object(value)

    def _object(self, value: Any) -> Any:
        """The object an id names (a fresh copy: expansions below it must not touch shared data)."""
        if not isinstance(value, str):
            return value
        a = self.account
        for prefix, collection in (("cus_", "customers"), ("sub_", "subscriptions"), ("in_", "invoices")):
            if value.startswith(prefix):
                found = self.collections[collection].rank(value)
                return self.collections[collection].render(found) if found is not None else value
        if value.startswith("di_"):
            return a.discount_by_id(value) or value
        for table in (a.price_by_id, a.product_by_id, a.coupon_by_id):
            if value in table:
                return dict(table[value])
        return value


def _ascending(candidates: Sequence[int] | None, start: int, stop: int) -> Iterator[int]:
    """Ranks from `start` up to `stop` (excluded): all of them, or the candidates among them."""
    if candidates is None:
        yield from range(start, stop)
        return
    for position in range(bisect_left(candidates, start), len(candidates)):
        if candidates[position] >= stop:
            return
        yield candidates[position]


def _descending(candidates: Sequence[int] | None, start: int, stop: int) -> Iterator[int]:
    """Ranks from `start` down to `stop` (included): all of them, or the candidates among them."""
    if candidates is None:
        yield from range(start, stop - 1, -1)
        return
    for position in range(bisect_right(candidates, start) - 1, -1, -1):
        if candidates[position] < stop:
            return
        yield candidates[position]


def _catalog(
    name: str, objects: Sequence[dict[str, Any]], served: Callable[[dict[str, Any]], dict[str, Any]] = dict
) -> Collection:
    def created(obj: dict[str, Any]) -> int:
        return int(obj["date"] if obj.get("object") == "invoiceitem" else obj["created"])  # an item has a date

    ordered = sorted(objects, key=created)
    by_id = {obj["id"]: rank for rank, obj in enumerate(ordered)}
    return Collection(
        name,
        None,
        len(ordered),
        [created(obj) for obj in ordered],
        lambda rank: served(ordered[rank]),
        lambda rank: str(ordered[rank]["id"]),
        by_id.get,
        ordered.__getitem__,
    )


# --- HTTP ---------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    fake: FakeStripe

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = self.fake.handle(self.command, self.path, self.headers.get("Authorization"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", "req_" + secrets.token_hex(7))
        self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or "2026-10-28.endive")
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer
    do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    """Bursts of new connections must not wait out a SYN retry (1 s) behind a short backlog."""


class Server:
    """A running fake on 127.0.0.1: `url`, `fake` (its stats), `close()`."""

    def __init__(self, fake: FakeStripe, port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"fake": fake})
        self.fake = fake
        self.httpd = _HTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-stripe", daemon=True)

    def start(self) -> Server:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(
    sizes: Sizes | None = None,
    *,
    port: int = 0,
    latency: float = 0.1,
    global_limit: int = GLOBAL_LIMIT,
    endpoint_limit: int = ENDPOINT_LIMIT,
) -> Server:
    """Start a fake Stripe in a background thread of this process."""
    fake = FakeStripe(
        Account(sizes or Sizes()), latency=latency, global_limit=global_limit, endpoint_limit=endpoint_limit
    )
    return Server(fake, port).start()


EVENTS_KEPT_S = 30 * 86_400
"""Stripe's Events API serves the last 30 days."""

INCLUDABLE = {"coupon": ("applies_to",)}
"""Fields Stripe leaves out of an object unless `expand[]` names them."""


class AccountStripe(FakeStripe):
    """The fake over an account's final objects (`worker.synthetic`), for the account replay.

    `objects` is `SyntheticAccount.objects()`: every kind as Stripe would serve
    it now, deleted objects left out (they answer 404). Coupons are served
    without `applies_to` unless expanded, as Stripe serves them. `events` are
    the account's events; `/v1/events` serves those of the 30 days before
    `now`, newest first, filtered by `type` or `types[]`.
    """

    def __init__(
        self,
        objects: dict[str, list[dict[str, Any]]],
        events: Sequence[dict[str, Any]],
        *,
        now: int,
        latency: float = 0.0,
        global_limit: int = GLOBAL_LIMIT,
        endpoint_limit: int = ENDPOINT_LIMIT,
    ) -> None:
        self.latency = latency
        self.window = SlidingWindow(global_limit, endpoint_limit)
        self.stats = Stats()
        self.lock = threading.Lock()
        self.by_id: dict[str, dict[str, Any]] = {}
        for kind_objects in objects.values():
            for obj in kind_objects:
                self.by_id[str(obj["id"])] = obj
        items = [
            {**item, "subscription": subscription["id"], "created": item.get("created") or subscription["created"]}
            for subscription in objects.get("subscriptions", [])
            for item in subscription["items"]["data"]
        ]
        kept = [event for event in events if event["created"] >= now - EVENTS_KEPT_S]
        kinds = ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "invoiceitems")
        self.collections = {kind: _catalog(kind, objects.get(kind, []), self._served) for kind in kinds}
        self.collections["events"] = _catalog("events", kept)
        self.collections["subscription_items"] = _catalog("subscription_items", items)
        # The filters a whole-account replay asks thousands of times (a subscription's invoices, a
        # customer's pending items): ranks by value, so a request reads its own objects, not the list.
        self.index: dict[tuple[str, str], dict[str, list[int]]] = {}
        for kind, name, value_of in (
            ("subscriptions", "customer", lambda obj: obj.get("customer")),
            ("invoices", "customer", lambda obj: obj.get("customer")),
            ("invoices", "subscription", _invoice_subscription),
            ("invoiceitems", "customer", lambda obj: obj.get("customer")),
            ("subscription_items", "subscription", lambda obj: obj.get("subscription")),
        ):
            collection, ranks = self.collections[kind], dict[str, list[int]]()
            assert collection.raw is not None
            for rank in range(collection.count):
                value = value_of(collection.raw(rank))
                if isinstance(value, str):
                    ranks.setdefault(value, []).append(rank)
            self.index[(kind, name)] = ranks
        self.account_object = {
            "id": "acct_replay0000001",
            "object": "account",
            "business_profile": {"name": "Synthetic SaaS Inc."},
            "charges_enabled": True,
            "country": "US",
            "default_currency": "usd",
            "metadata": {},
            "type": "standard",
        }

    @staticmethod
    def _served(obj: dict[str, Any]) -> dict[str, Any]:
        """A deep copy as Stripe serves it: includable fields left out, an invoice's first lines embedded.

        Deep, because expanding writes into what it serves (`tiers` on a price inside an item): a
        shallow copy would change the account's own objects, and with them the webhooks sent later.
        """
        served = copy.deepcopy(obj)
        for field_name in INCLUDABLE.get(str(obj.get("object")), ()):
            served.pop(field_name, None)
        lines = obj.get("lines")
        if obj.get("object") == "invoice" and isinstance(lines, dict):
            data = lines.get("data") or []
            served["lines"] = {**lines, "data": data[:LINES_EMBEDDED], "has_more": len(data) > LINES_EMBEDDED}
        return served

    def _candidates(self, kind: str, query: Query) -> Sequence[int] | None:
        found: Sequence[int] | None = None
        for (indexed, name), ranks in self.index.items():
            value = query.scalars.get(name)
            if indexed == kind and value is not None:
                own = ranks.get(value, [])
                found = own if found is None or len(own) < len(found) else found
        return found

    def _filter(self, kind: str, query: Query) -> Callable[[int], bool] | None:
        collection = self.collections[kind]
        raw = collection.raw or collection.render

        def field(rank: int, name: str) -> Any:
            return raw(rank).get(name)

        customer = query.scalars.get("customer")
        if kind == "subscriptions":
            status = query.scalars.get("status")
            if status is None:
                wanted = {"active", "past_due", "trialing", "unpaid", "incomplete", "paused"}
            elif status == "all":
                wanted = None
            elif status == "ended":
                wanted = {"canceled", "incomplete_expired"}
            else:
                wanted = {status}
            return lambda rank: (
                (wanted is None or field(rank, "status") in wanted)
                and (customer is None or field(rank, "customer") == customer)
            )
        if kind == "invoices":
            status, sub = query.scalars.get("status"), query.scalars.get("subscription")
            return lambda rank: (
                (status is None or field(rank, "status") == status)
                and (customer is None or field(rank, "customer") == customer)
                and (sub is None or _invoice_subscription(raw(rank)) == sub)
            )
        if kind == "events":
            types = set(query.types) | ({query.scalars["type"]} if "type" in query.scalars else set())
            return None if not types else lambda rank: field(rank, "type") in types
        if kind == "invoiceitems":
            pending, invoice = query.scalars.get("pending"), query.scalars.get("invoice")
            if pending not in (None, "true", "false"):
                raise StripeError(400, "Invalid boolean: pending", param="pending")
            return lambda rank: (
                (pending is None or (field(rank, "invoice") is None) == (pending == "true"))
                and (invoice is None or field(rank, "invoice") == invoice)
                and (customer is None or field(rank, "customer") == customer)
            )
        if kind == "subscription_items":
            sub = query.scalars.get("subscription")
            if sub is None:
                raise StripeError(400, "Missing required param: subscription.", param="subscription")
            return lambda rank: field(rank, "subscription") == sub
        if kind in ("products", "prices"):
            active = query.scalars.get("active")
            if kind == "prices" and active is None:
                active = "true"
            product = query.scalars.get("product")
            return lambda rank: (
                (active is None or str(field(rank, "active")).lower() == active)
                and (product is None or field(rank, "product") == product)
            )
        return None

    def _lines(self, invoice: int, query: Query) -> dict[str, Any]:
        limit = query.limit()
        owner = self.by_id[self.collections["invoices"].id_of(invoice)]
        lines = owner["lines"]["data"]
        start = 0
        if "starting_after" in query.scalars:
            ids = [line["id"] for line in lines]
            start = self._line_index(ids, query.scalars["starting_after"]) + 1
        page = lines[start : start + limit]
        return {
            "object": "list",
            "data": page,
            "has_more": start + limit < len(lines),
            "url": f"/v1/invoices/{owner['id']}/lines",
        }

    def _resolve(self, owner: str, field_name: str, node: dict[str, Any]) -> Any:
        if field_name in INCLUDABLE.get(owner, ()):
            return self.by_id.get(str(node.get("id")), {}).get(field_name)
        if owner == "customer" and field_name in ("subscriptions", "tax_ids"):
            data = (
                [self._served(s) for s in self.by_id.values() if s.get("object") == "subscription"
                 and s.get("customer") == node["id"] and s.get("status") != "canceled"]
                if field_name == "subscriptions"
                else []
            )  # fmt: skip
            return {"object": "list", "data": data[:10], "has_more": len(data) > 10, "url": ""}
        value = node.get(field_name)
        if isinstance(value, list):
            return [self._object(entry) for entry in value]
        return self._object(value)

    def _object(self, value: Any) -> Any:
        if isinstance(value, str) and value in self.by_id:
            return self._served(self.by_id[value])
        return value


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    """The subscription an invoice bills: `parent.subscription_details` (current API) or `subscription` (2020)."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    found = details.get("subscription") or invoice.get("subscription")
    return found if isinstance(found, str) else None


# --- self-check ---------------------------------------------------------------------------------


CHECK_SIZES = Sizes(customers=600, subscriptions=800, invoices=8_000, seed=11)


def self_check(sizes: Sizes = CHECK_SIZES, latency: float = 0.1) -> None:
    """Page through every endpoint with plain `requests`; assert what a Stripe client relies on."""
    import requests

    server = serve(sizes, latency=latency)
    account = server.fake.account
    http = requests.Session()
    http.headers["Authorization"] = "Bearer sk_live_selfcheck"
    sent = 0

    def get(path: str, **params: Any) -> requests.Response:
        nonlocal sent
        sent += 1
        return http.get(server.url + path, params=params, timeout=10)

    def ok(path: str, **params: Any) -> dict[str, Any]:
        response = get(path, **params)
        assert response.status_code == 200, (path, params, response.status_code, response.text[:300])
        body: dict[str, Any] = response.json()
        return body

    def every(path: str, **params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = ok(path, limit=100, **params)
            assert len(page["data"]) <= 100
            found.extend(page["data"])
            if not page["has_more"]:
                return found
            assert len(page["data"]) == 100, "a page short of the limit says has_more"
            params["starting_after"] = page["data"][-1]["id"]

    def check(what: str, condition: object, detail: str = "") -> None:
        print(f"  {'ok ' if condition else 'FAIL'} {what}{f' ({detail})' if detail else ''}", flush=True)
        if not condition:
            raise SystemExit(f"self-check failed: {what}")

    try:
        print(f"fake Stripe self-check at {server.url}: {sizes}")
        anonymous = requests.get(server.url + "/v1/customers", timeout=10)
        wrong = requests.get(server.url + "/v1/customers", headers={"Authorization": "Bearer pk_live_x"}, timeout=10)
        check(
            "401 without a key or with a publishable key, Stripe-shaped",
            anonymous.status_code == 401
            and wrong.status_code == 401
            and anonymous.json()["error"]["type"] == "invalid_request_error",
        )
        sent += 2

        expected = {
            "customers": len(account.customer_created),
            "products": len(account.products),
            "coupons": len(account.coupons),
            "subscriptions": sum(1 for s in account.sub_status if s != CANCELED),
            "invoices": account.invoice_count,
        }
        listed: dict[str, list[dict[str, Any]]] = {}
        for kind, count in expected.items():
            objects = every(f"/v1/{kind}")
            listed[kind] = objects
            ids = [obj["id"] for obj in objects]
            created = [obj["created"] for obj in objects]
            check(
                f"/v1/{kind}: every object once, newest first",
                len(ids) == count and len(set(ids)) == count and created == sorted(created, reverse=True),
                f"{len(ids):,} of {count:,}",
            )
        everything = every("/v1/subscriptions", status="all")
        canceled = every("/v1/subscriptions", status="canceled")
        check(
            "subscriptions: canceled left out unless status=all or status=canceled",
            len(everything) == sizes.subscriptions
            and len(canceled) == sizes.subscriptions - expected["subscriptions"]
            and all(sub["status"] == "canceled" for sub in canceled),
            f"{len(everything):,} all, {len(canceled):,} canceled",
        )
        active_prices, archived = every("/v1/prices"), every("/v1/prices", active="false")
        check(
            "prices: active ones by default, archived with active=false, all retrievable",
            all(p["active"] for p in active_prices)
            and archived
            and not any(p["active"] for p in archived)
            and len(active_prices) + len(archived) == len(account.prices)
            and ok(f"/v1/prices/{archived[0]['id']}")["id"] == archived[0]["id"],
            f"{len(active_prices)} active, {len(archived)} archived",
        )

        invoices = listed["invoices"]
        moments = sorted(invoice["created"] for invoice in invoices)
        low, high = moments[len(moments) // 3], moments[2 * len(moments) // 3]
        inside = {i["id"] for i in invoices if low <= i["created"] < high}
        window = every("/v1/invoices", **{"created[gte]": low, "created[lt]": high})
        strict = every("/v1/invoices", **{"created[gt]": low, "created[lte]": high})
        check(
            "created[gte]/[lt] and [gt]/[lte] select exactly their window",
            {i["id"] for i in window} == inside
            and {i["id"] for i in strict} == {i["id"] for i in invoices if low < i["created"] <= high},
            f"{len(window):,} invoices",
        )
        cuts = [moments[0], *(moments[len(moments) * k // 4] for k in (1, 2, 3)), moments[-1] + 1]
        parts = [
            {i["id"] for i in every("/v1/invoices", **{"created[gte]": a, "created[lt]": b})}
            for a, b in itertools.pairwise(cuts)
        ]
        check(
            "windows read apart (as in parallel) add up to the whole list, no overlap",
            sum(len(p) for p in parts) == len(invoices) and set().union(*parts) == {i["id"] for i in invoices},
        )
        resumed = ok("/v1/invoices", limit=3, starting_after=invoices[500]["id"], **{"created[lt]": high})
        check(
            "starting_after combines with a created filter",
            [i["id"] for i in resumed["data"]] == [i["id"] for i in invoices[501:] if i["created"] < high][:3],
        )
        before = ok("/v1/invoices", limit=5, ending_before=invoices[100]["id"])
        check("ending_before pages back", [i["id"] for i in before["data"]] == [i["id"] for i in invoices[95:100]])

        long = [i for i in invoices if i["lines"]["has_more"]]
        all_lines_ok = True
        for invoice in long:
            embedded = invoice["lines"]["data"]
            lines = every(f"/v1/invoices/{invoice['id']}/lines")
            rest = every(f"/v1/invoices/{invoice['id']}/lines", starting_after=embedded[-1]["id"])
            small = []
            cursor: dict[str, Any] = {}
            while True:
                page = ok(f"/v1/invoices/{invoice['id']}/lines", limit=4, **cursor)
                small.extend(page["data"])
                if not page["has_more"]:
                    break
                cursor = {"starting_after": page["data"][-1]["id"]}
            all_lines_ok &= (
                len(embedded) == 10
                and len(lines) == invoice["lines"]["total_count"] > 10
                and [x["id"] for x in lines] == [x["id"] for x in embedded + rest] == [x["id"] for x in small]
                and sum(x["amount"] for x in lines) == invoice["subtotal"]
            )
        short_ok = all(
            len(i["lines"]["data"]) == i["lines"]["total_count"] <= 10 for i in invoices if not i["lines"]["has_more"]
        )
        check(
            "invoices embed 10 lines; /lines pages the rest (limit 100 and 4); lines add up to subtotal",
            bool(long) and all_lines_ok and short_ok,
            f"{len(long)} invoices of more than 10 lines",
        )
        line = invoices[0]["lines"]["data"][0]
        check(
            "lines in the current shape: parent.subscription_item_details, pricing.price_details, period",
            line["parent"]["type"] == "subscription_item_details"
            and line["parent"]["subscription_item_details"]["subscription"].startswith("sub_")
            and line["pricing"]["price_details"]["price"].startswith("price_")
            and set(line["period"]) == {"start", "end"}
            and invoices[0]["parent"]["subscription_details"]["subscription"].startswith("sub_"),
        )
        prorated = [
            x for i in invoices for x in i["lines"]["data"] if x["parent"]["subscription_item_details"]["proration"]
        ]
        check("upgrades and downgrades show as proration lines", len(prorated) > 50, f"{len(prorated)} lines")

        plain = [s for s in everything if s["discounts"] or s["items"]["data"][0]["discounts"]]
        expanded = every(
            "/v1/subscriptions", status="all", **{"expand[]": ["data.discounts", "data.items.data.discounts"]}
        )
        with_discount = [s for s in expanded if s["discounts"]]
        check(
            "discounts are ids unless expanded; expanded, they hold source.coupon as an id",
            plain
            and all(isinstance(d, str) for s in plain for d in s["discounts"])
            and with_discount
            and all(
                isinstance(d, dict) and isinstance(d["source"]["coupon"], str)
                for s in with_discount
                for d in s["discounts"]
            ),
            f"{len(with_discount)} subscriptions with a discount",
        )
        deep = ok("/v1/subscriptions", limit=5, **{"expand[0]": "data.items.data.price.tiers"})
        too_deep = get("/v1/subscriptions", limit=5, **{"expand[]": "data.items.data.price.product.default_price"})
        wrong_field = get("/v1/subscriptions", limit=5, **{"expand[]": "data.status"})
        check(
            "expand: four levels past data. allowed, five or an unexpandable field is a 400",
            deep["data"] and too_deep.status_code == 400 and wrong_field.status_code == 400,
        )
        tiered_plain = [p for p in active_prices if p["billing_scheme"] == "tiered"]
        tiered = [p for p in every("/v1/prices", **{"expand[]": "data.tiers"}) if p["billing_scheme"] == "tiered"]
        coupons = every("/v1/coupons", **{"expand[]": "data.applies_to"})
        check(
            "tiers and applies_to appear only when expanded",
            tiered
            and all("tiers" not in p for p in tiered_plain)
            and all(len(p["tiers"]) == 3 for p in tiered)
            and all("applies_to" in c for c in coupons)
            and all("applies_to" not in c for c in listed["coupons"]),
        )
        one = everything[len(everything) // 2]
        check(
            "GET /v1/subscriptions/{id} is the listed object; /v1/invoices/{id} too",
            ok(f"/v1/subscriptions/{one['id']}") == one and ok(f"/v1/invoices/{invoices[7]['id']}") == invoices[7],
        )
        missing = get("/v1/subscriptions/sub_99999999")
        unknown_path = get("/v1/nothing_here")
        check(
            "unknown ids: 404 resource_missing; unknown paths 404",
            missing.status_code == 404
            and missing.json()["error"]["code"] == "resource_missing"
            and unknown_path.status_code == 404,
        )
        check(
            "unknown parameter and limit over 100: 400",
            get("/v1/customers", bogus=1).status_code == 400 and get("/v1/customers", limit=101).status_code == 400,
        )
        started = time.perf_counter()
        ok("/v1/customers", limit=1)
        took = time.perf_counter() - started
        check(
            f"every request takes the latency ({latency * 1000:.0f} ms)",
            latency <= took < latency + 0.05,
            f"{took * 1000:.0f} ms",
        )

        def burst(paths: list[str]) -> list[requests.Response]:
            from concurrent.futures import ThreadPoolExecutor

            time.sleep(1.1)  # an empty window
            barrier = threading.Barrier(len(paths))
            sessions = [requests.Session() for _ in paths]

            def one(index: int) -> requests.Response:
                barrier.wait()
                return sessions[index].get(
                    server.url + paths[index],
                    params={"limit": 1},
                    headers={"Authorization": "Bearer sk_live_selfcheck"},
                    timeout=10,
                )

            with ThreadPoolExecutor(len(paths)) as pool:
                return list(pool.map(one, range(len(paths))))

        answers = burst(["/v1/coupons"] * 40)
        sent += 40
        refused = [r for r in answers if r.status_code == 429]
        check(
            "40 requests at once on one endpoint: 25 served, 15 refused 429 rate_limit_error, no Retry-After",
            len(refused) == 15
            and all(r.json()["error"]["type"] == "rate_limit_error" for r in refused)
            and not any("Retry-After" in r.headers for r in refused),
            f"{len(refused)} refused",
        )
        kinds = ["customers", "products", "prices", "coupons", "subscriptions", "invoices"]
        answers = burst([f"/v1/{kind}" for kind in kinds for _ in range(20)])
        sent += 120
        refused = [r for r in answers if r.status_code == 429]
        check("120 requests at once over 6 endpoints (20 each): 100 served, 20 refused", len(refused) == 20)
        time.sleep(1.05)
        check("a second later the window is open again", get("/v1/coupons", limit=1).status_code == 200)
        stats = ok("/__stats")
        sent -= 1
        total = stats["total"]
        check(
            "/__stats counts every request, 429 and object",
            total["requests"] + 2 == sent  # the two 401s are refused before they are counted as arrivals
            and total["rate_limited"] == 35
            and stats["endpoints"]["/v1/invoices/*/lines"]["pages"] > 0
            and total["objects"] >= sum(expected.values()),
            f"{total['requests']:,} requests, {total['rate_limited']} refused, {total['objects']:,} objects",
        )
        print("self-check passed")
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--customers", type=int, default=Sizes.customers)
    parser.add_argument("--subscriptions", type=int, default=Sizes.subscriptions)
    parser.add_argument("--invoices", type=int, default=Sizes.invoices)
    parser.add_argument("--seed", type=int, default=Sizes.seed)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds added to every request")
    parser.add_argument("--global-limit", type=int, default=GLOBAL_LIMIT)
    parser.add_argument("--endpoint-limit", type=int, default=ENDPOINT_LIMIT)
    parser.add_argument("--self-check", action="store_true", help="run the self-check and exit")
    args = parser.parse_args()
    if args.self_check:
        self_check()
        return
    started = time.perf_counter()
    sizes = Sizes(args.customers, args.subscriptions, args.invoices, args.seed)
    server = serve(
        sizes,
        port=args.port,
        latency=args.latency,
        global_limit=args.global_limit,
        endpoint_limit=args.endpoint_limit,
    )
    account = server.fake.account
    print(server.url, flush=True)
    print(
        f"fake Stripe: {len(account.customer_created):,} customers, {sizes.subscriptions:,} subscriptions, "
        f"{account.invoice_count:,} invoices (built in {time.perf_counter() - started:.1f} s); "
        f"latency {args.latency * 1000:.0f} ms, limits {args.global_limit}/s and {args.endpoint_limit}/s per endpoint",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
