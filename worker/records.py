"""A subscription's history from Stripe's records (mrr-rules.md §10), for the backfill and reconciliation.

`ledger.history.reconstruct` does the rebuilding from invoices; this module
brings it what only the database and Stripe know: the discounts only the
invoices can value (`InvoicedDiscounts`), and, for one subscription, its
invoices and pending proration items read from Stripe (`read_records`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ledger.db import utcnow
from ledger.history import (
    HistoricalVersion,
    invoice_fields,
    invoice_item_subscription,
    named_discounts,
    reconstruct,
    unvalued_coupon,
)
from ledger.models import StripeObject
from ledger.state import NEVER_OBSERVED, record_object
from worker.streams import INVOICES, LINE_EXPAND
from worker.stripe_api import NoSuchObject, StripeAPI, StripeUnavailable

log = logging.getLogger("subledger.records")

PriceLookup = Callable[[str], Mapping[str, Any] | None]


def stored_object(session: Session, object_id: str, kind: str) -> Mapping[str, Any] | None:
    row = session.get(StripeObject, object_id)
    return row.payload if row is not None and row.object == kind else None


def stored_payload(session: Session, object_id: str) -> Mapping[str, Any] | None:
    row = session.get(StripeObject, object_id)
    return row.payload if row is not None else None


def stored_prices(session: Session, cache: dict[str, Mapping[str, Any]]) -> PriceLookup:
    """Stored prices (and legacy plans) by id, each read once into `cache`."""

    def price(price_id: str) -> Mapping[str, Any] | None:
        if price_id not in cache:
            row = session.get(StripeObject, price_id)
            if row is None or row.object not in ("price", "plan"):
                return None  # not kept: a later read may find it stored
            cache[price_id] = row.payload
        return cache[price_id]

    return price


class InvoicedDiscounts:
    """The discounts of a subscription's history that only its invoices can value.

    A discount Stripe no longer has (named by id, neither expanded anywhere nor
    stored: removed since), and one whose coupon Stripe has deleted (named by
    id, not stored whole, 404): neither can be read again, and the ledger must
    not wait for them. Each coupon is looked for once per instance; without
    `api` none is (the caller reads them from Stripe later).
    """

    def __init__(self, api: Callable[[], StripeAPI] | None) -> None:
        self._api = api
        self._gone: dict[str, Mapping[str, Any] | None] = {}
        """Coupons looked for so far: what is known of one Stripe has deleted, None for one it has."""

    def find(
        self,
        session: Session,
        subscription_id: str,
        subscription: Mapping[str, Any],
        invoices: Sequence[Mapping[str, Any]],
        notes: list[str],
    ) -> dict[str, Mapping[str, Any]]:
        """Each such discount with what is known of its coupon (`reconstruct(as_invoiced=…)`); a note for each."""
        found: dict[str, Mapping[str, Any]] = {}
        for discount_id, discount in named_discounts(subscription, invoices).items():
            if discount is None:
                discount = stored_object(session, discount_id, "discount")
            if discount is None:
                found[discount_id] = {}
                notes.append(
                    f"subscription {subscription_id}: discount {discount_id} valued as invoiced "
                    "(Stripe no longer has it)"
                )
                continue
            coupon_id = unvalued_coupon(discount)
            known = None if coupon_id is None else self._deleted_coupon(session, coupon_id)
            if known is not None:
                found[discount_id] = known
                notes.append(
                    f"subscription {subscription_id}: discount {discount_id} valued as invoiced "
                    f"(Stripe has deleted its coupon {coupon_id})"
                )
        return found

    @staticmethod
    def store_valued(session: Session, coupons: Mapping[str, Mapping[str, Any]]) -> None:
        """Store the deleted coupons valued as invoiced where nothing stored values them.

        A version naming one of their discounts by id (a webhook's, the events catch-up's) is then valued
        as the history values it, instead of waiting for a coupon Stripe no longer answers for. Stored
        as never read, so a copy of the coupon itself (a `coupon.deleted` event) replaces it.
        """
        for coupon_id, coupon in coupons.items():
            stored = stored_object(session, coupon_id, "coupon")
            if stored is None or (stored.get("percent_off") is None and stored.get("amount_off") is None):
                record_object(session, coupon, observed_at=NEVER_OBSERVED, deleted=True)

    @staticmethod
    def store_discounts(session: Session, discounts: Mapping[str, Mapping[str, Any]]) -> bool:
        """Store the discounts a rebuilt history carries (as its invoices had them, or valued from their
        amounts) where none is stored; whether some were.

        A version naming one by id (a webhook's whose `customer.discount.created` was lost) is then
        valued, instead of waiting for a discount Stripe cannot give (it has no reading one by id).
        Stored as never read and deleted, so an event's copy of the discount replaces it.
        """
        stored = False
        for discount_id, discount in discounts.items():
            if stored_object(session, discount_id, "discount") is None:
                record_object(session, discount, observed_at=NEVER_OBSERVED, deleted=True)
                stored = True
        return stored

    def _deleted_coupon(self, session: Session, coupon_id: str) -> Mapping[str, Any] | None:
        """What is known of a coupon Stripe has deleted (it answers 404); None when it can be read.

        A coupon not stored whole is fetched (and stored) once. Any other refusal
        leaves it to the recompute, which reports what it cannot fetch.
        """
        if coupon_id not in self._gone:
            stored = stored_object(session, coupon_id, "coupon")
            gone: Mapping[str, Any] | None = None
            unvalued = stored is None or (stored.get("percent_off") is None and stored.get("amount_off") is None)
            if unvalued and self._api is not None:
                try:
                    record_object(session, self._api().coupon(coupon_id), observed_at=utcnow())
                except NoSuchObject:
                    gone = {**(stored or {}), "id": coupon_id, "object": "coupon", "deleted": True}
                except StripeUnavailable as exc:
                    log.warning("coupon %s could not be read: %s", coupon_id, exc)
            self._gone[coupon_id] = gone
        return self._gone[coupon_id]


def with_every_line(api: StripeAPI, invoice: dict[str, Any]) -> dict[str, Any]:
    """`invoice` with every line: Stripe embeds the first 10 (`has_more`), the rest are paged.

    Raises StripeUnavailable when they cannot be read.
    """
    lines = invoice.get("lines")
    if not isinstance(lines, Mapping) or not lines.get("has_more"):
        return invoice
    data = list(lines.get("data") or [])
    last = str(data[-1]["id"]) if data else None
    for page in api.pages(f"/v1/invoices/{invoice['id']}/lines", starting_after=last, expand=LINE_EXPAND):
        data.extend(page)
    invoice["lines"] = dict(lines, data=data, has_more=False)
    return invoice


@dataclass(frozen=True)
class Records:
    """What Stripe keeps of one subscription's past: its invoices (every line) and pending proration items."""

    invoices: list[dict[str, Any]]
    invoice_items: list[dict[str, Any]]

    def rebuild(
        self,
        session: Session,
        subscription: Mapping[str, Any],
        *,
        prices: PriceLookup,
        discounts: InvoicedDiscounts,
        read_at: datetime,
        notes: list[str],
    ) -> list[HistoricalVersion]:
        """The subscription's versions as its records date them (`ledger.history.reconstruct`).

        Raises ValueError, KeyError or TypeError for records it cannot read.
        """
        subscription_id = str(subscription["id"])
        invoices = sorted(
            (invoice_fields(invoice) for invoice in self.invoices),
            key=lambda invoice: (invoice.get("created") or 0, invoice["id"]),
        )
        as_invoiced = discounts.find(session, subscription_id, subscription, invoices, notes)
        return reconstruct(
            subscription,
            invoices,
            prices=prices,
            read_at=read_at,
            invoice_items=self.invoice_items,
            as_invoiced=as_invoiced,
        )


def read_records(api: StripeAPI, subscription_id: str, customer_id: str) -> Records:
    """The subscription's invoices and pending proration items, read from Stripe now.

    Raises StripeUnavailable.
    """
    invoices = [
        with_every_line(api, invoice)
        for page in api.pages("/v1/invoices", subscription=subscription_id, **INVOICES.params)
        for invoice in page
    ]
    items = [
        item
        for page in api.pages("/v1/invoiceitems", customer=customer_id, pending="true")
        for item in page
        if item.get("proration") and invoice_item_subscription(item) == subscription_id
    ]
    return Records(invoices, items)
