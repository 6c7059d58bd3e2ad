"""What a backfill reads: Stripe's list endpoints, cut into checkpointed streams.

The catalog (products, prices, coupons) and the pending invoice items are
read whole; customers, subscriptions and invoices are cut into `created`
windows read at the same time. A stream's name (`invoices:2024-01-01T00:00:00Z..2024-02-15T09:30:00Z`)
is its checkpoint's key, so a resumed run reads exactly what it planned.

Stripe filters every big list by `created`; some stand-ins for it do not
(localstripe answers `Unexpected created`). A listing refused its windows is
read whole, in one stream named after it (`customers`), and its objects are
kept only if its windows would have held them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

WINDOWS = 8
"""`created` windows each big list (customers, subscriptions, invoices) starts as. Accounts grow
unevenly, so while a listing has an idle reader, its newest window with pages enough left hands over
its older half (`worker.backfill`): a few windows to start with are enough."""

FIRST_DAY = datetime(2010, 1, 1, tzinfo=UTC)
"""Before any Stripe object: the start of the first window without `--since`."""


@dataclass(frozen=True)
class Listing:
    """One Stripe list endpoint and how to read it."""

    kind: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    windowed: bool = False
    """Split into `created` windows and limited by `--since` (the catalog is read whole)."""
    name: str = ""
    """What its streams are called, when not `kind`."""

    @property
    def stream(self) -> str:
        return self.name or self.kind


# Stripe lists only active products and prices unless asked for the archived ones,
# and old invoices bill archived prices.
CATALOG = (
    Listing("products", "/v1/products", {"active": "true"}),
    Listing("products", "/v1/products", {"active": "false"}, name="products-archived"),
    Listing("prices", "/v1/prices", {"active": "true", "expand": ["data.tiers"]}),
    Listing("prices", "/v1/prices", {"active": "false", "expand": ["data.tiers"]}, name="prices-archived"),
    Listing("coupons", "/v1/coupons", {"expand": ["data.applies_to"]}),
)
CUSTOMERS = Listing("customers", "/v1/customers", windowed=True)
# Stripe expands four levels at most: `data.items.data.price.tiers` is five, so
# tiers come from the stored prices; coupons come from the stored coupons.
SUBSCRIPTIONS = Listing(
    "subscriptions",
    "/v1/subscriptions",
    {"status": "all", "expand": ["data.discounts", "data.items.data.discounts"]},
    windowed=True,
)
# A line names its discounts by id, and a discount removed from its subscription since is nowhere
# else: expanded, it brings its coupon, which values the line as invoiced.
INVOICES = Listing(
    "invoices", "/v1/invoices", {"expand": ["data.discounts", "data.lines.data.discounts"]}, windowed=True
)
LINE_EXPAND = ["data.discounts"]
"""What an invoice's lines read past the embedded ones expand, as `INVOICES` does for those."""
# A proration not invoiced yet (`proration_behavior: create_prorations`) is a pending invoice item:
# the only record of a change made since the subscription's last invoice (docs/mrr-rules.md §10).
# Few at any time, so read whole. Billed ones are their invoices' lines.
PENDING_ITEMS = Listing("invoiceitems", "/v1/invoiceitems", {"pending": "true"})
LISTINGS = {listing.stream: listing for listing in (*CATALOG, CUSTOMERS, SUBSCRIPTIONS, INVOICES, PENDING_ITEMS)}
KINDS = frozenset(listing.kind for listing in LISTINGS.values())


@dataclass(frozen=True)
class Stream:
    """One checkpointed read: a listing, within a `created` window for the windowed ones."""

    listing: Listing
    created_gte: int | None = None
    created_lt: int | None = None

    @property
    def read_whole(self) -> bool:
        """A windowed listing read without `created` filters, because they were refused."""
        return self.listing.windowed and self.created_gte is None

    @property
    def name(self) -> str:
        if self.created_gte is None or self.created_lt is None:
            return self.listing.stream
        return f"{self.listing.stream}:{_iso(self.created_gte)}..{_iso(self.created_lt)}"

    @classmethod
    def from_name(cls, name: str) -> Stream:
        kind, _, window = name.partition(":")
        if not window:
            return cls(LISTINGS[kind])
        start, end = window.split("..")
        return cls(LISTINGS[kind], _timestamp(start), _timestamp(end))

    def params(self) -> dict[str, Any]:
        params = dict(self.listing.params)
        if self.created_gte is not None and self.created_lt is not None:
            params["created"] = {"gte": self.created_gte, "lt": self.created_lt}
        return params


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def windows(start: int, end: int, count: int, *, dense_from: int | None = None) -> list[tuple[int, int]]:
    """[start, end) cut into `count` windows of equal length from `dense_from` on.

    `dense_from` is where the data starts (the oldest customer): windows spread
    over an account's actual life, not over the years before it; the first
    window still reaches back to `start`.
    """
    spread_from = max(start, dense_from) if dense_from is not None else start
    if count <= 1 or end - spread_from < count:
        return [(start, end)]
    step = (end - spread_from) / count
    bounds = [start, *(spread_from + round(step * i) for i in range(1, count)), end]
    return [(low, high) for low, high in itertools.pairwise(bounds) if high > low]


def ready_from(streams: Sequence[Stream], read: set[str], reached: Mapping[str, int] | None = None) -> datetime | None:
    """The earliest `created` from which every window of the big lists is read; None while none is.

    Nothing a customer has (subscription, invoice) is older than the customer,
    so the history of a customer created then or later is all stored. The
    catalog comes first: history prices its invoices' lines. A listing read
    whole holds nothing back once read, and everything until then. A window
    still being read, newest first, is read from the second after the oldest
    object it committed (`reached`, by stream name) on: Stripe lists newest
    first, and objects of that same second may still be on the next page.
    """
    reached = reached or {}
    if any(not stream.listing.windowed and stream.name not in read for stream in streams):
        return None
    frontier: int | None = None
    for listing in (CUSTOMERS, SUBSCRIPTIONS, INVOICES):
        own = sorted(
            (stream for stream in streams if stream.listing.stream == listing.stream),
            key=lambda stream: -(stream.created_gte or 0),
        )
        if any(stream.read_whole for stream in own):
            if any(stream.name not in read for stream in own):
                return None
            continue
        reach: int | None = None
        for stream in own:
            if stream.name not in read:
                partly = reached.get(stream.name)
                if partly is not None and stream.created_lt is not None and partly + 1 < stream.created_lt:
                    reach = partly + 1
                break
            reach = stream.created_gte
        if own and reach is None:
            return None
        if reach is not None:
            frontier = reach if frontier is None else max(frontier, reach)
    return datetime.fromtimestamp(frontier, UTC) if frontier is not None else None
