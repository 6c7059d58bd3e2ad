"""A subscription's past, rebuilt from Stripe's records: docs/history.md, mrr-rules.md §10.

Stripe keeps only a subscription's current state, and its Events API only the
last 30 days. Its invoices keep every billed change, though. A regular line
says which item was billed at which price and quantity for which period; a
proration line dates a change made inside a period (a credit for what was
removed, a debit for what was added, both from the change's instant). Read in
time order these records give the subscription's items at every instant, each
item lasting until its own billed period ends; one version is kept per instant
at which what the MRR rules read changed, and the subscription as read now
comes last. The versions feed the same timeline (`ledger.timeline.Snapshot`)
as webhook events do, so backfilled history and live events are valued by one
set of rules.

Pure: no I/O. Prices named only by id (current API lines) come from the
caller's `prices` lookup; discounts not expanded on the invoice stay ids, which
the engine resolves from stored objects later, except those the caller names
in `as_invoiced` (Stripe no longer has them or their coupon): those are valued
from the invoices that applied them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from ledger import jsoncodec
from ledger.mrr import UnresolvedStripeObject, item_amount

PriceLookup = Callable[[str], Mapping[str, Any] | None]
"""Stored price objects by id (with `tiers` when tiered); None when the price is not stored."""

AsInvoiced = Mapping[str, Mapping[str, Any]]
"""Discounts to value from the invoices that applied them, by discount id: what is known of each
one's coupon (its fields, or nothing). Stripe no longer has the coupon, or the discount itself."""

IGNORED_INVOICE_STATUSES = frozenset({"draft", "void"})
"""A draft may still change and a void invoice was never owed: neither says what was billed."""

_INVOICE_FIELDS = (
    "id",
    "created",
    "status",
    "billing_reason",
    "subscription",
    "parent",
    "lines",
    "discount",
    "discounts",
    "total_discount_amounts",
)
"""What `reconstruct` reads of an invoice."""

CHANGE_INVOICE = "subscription_update"
"""`billing_reason` of an invoice made by a change itself: it shows the subscription's discounts at the change."""

CURRENT_SOURCE = "current"
"""Source of the version that is the subscription as read now."""

AS_INVOICED_MARK = "as_invoiced"
"""Field of a coupon made by `reconstruct` from invoices: the ids of the invoices its `amount_off` comes from."""

AS_INVOICED_SUFFIX = " (as invoiced)"
"""Ends the id of a coupon made from invoices for a discount nothing else says anything of."""

NEXT_INSTANT = timedelta(seconds=1)
"""How far after the last invoice version the current state goes when its own date is not later."""


@dataclass(frozen=True)
class HistoricalVersion:
    """A subscription as it stood from `observed_at` on, and where that came from."""

    subscription: dict[str, Any]
    """A full subscription payload, shaped like the current subscription it was built from."""
    observed_at: datetime
    """UTC, aware: the instant a record dates (a period's start, a change's), or the read / end (current)."""
    source: str
    """`invoice:<in_…>` (or `invoiceitem:<ii_…>`) for the record that dates the version; `current` for
    the subscription as read now, and for a trial that only its dates show."""


_Rates = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A line's item `price` (and legacy `plan`) objects."""


@dataclass(frozen=True)
class _Billed:
    """The regular (not proration) subscription lines one invoice has for one period start."""

    period_start: datetime
    invoice: Mapping[str, Any]
    lines: tuple[Mapping[str, Any], ...]


_REMOVED, _ADDED, _BILLED = 0, 1, 2
"""What a record says of its item: a proration credit, a proration debit, a billed period."""


@dataclass(frozen=True)
class _Record:
    """One line of evidence about one subscription item, dated at its `period.start`."""

    at: datetime
    until: datetime | None
    """When the period it bills ends: the item lasts until then unless a record says otherwise."""
    item_id: str
    effect: int
    line: Mapping[str, Any]
    """The invoice line (or pending invoice item) that says it."""
    holder: Mapping[str, Any]
    """The invoice it is on, or the pending invoice item itself."""
    order: tuple[int, str, int]
    """(created, id, position) of the line on its holder: ties broken the same whatever the input order."""


@dataclass(frozen=True)
class _Taken:
    """What a discount took off one billed line, and what was left on the line before it."""

    amount: int
    base: int
    invoice: Mapping[str, Any] | None = field(default=None, compare=False)
    """The invoice of the line."""


@dataclass(frozen=True)
class _Item:
    """One subscription item as the records say it stands."""

    item_id: str
    rate: dict[str, Any]
    quantity: int | None
    discounts: tuple[Any, ...]
    """The item's own discounts (not the invoice's), expanded where an object is at hand."""
    invoiced: Mapping[str, _Taken]
    """Discount id → what it took off the item's last billed line."""
    period: tuple[Any, Any]
    until: datetime | None
    holder: Mapping[str, Any]
    billed_on: Mapping[str, Any] | None
    """The invoice of the item's last billed line (None: never billed, added by a proration)."""

    def key(self) -> tuple[str, int, tuple[str, ...]]:
        """What the MRR rules read of it: price id, quantity, discount ids."""
        rate_id = _id(self.rate.get("price")) or _id(self.rate.get("plan")) or ""
        return rate_id, 1 if self.quantity is None else int(self.quantity), tuple(sorted(_ids(self.discounts)))


@dataclass
class _State:
    """The subscription's items and subscription-level discounts at one instant."""

    items: dict[str, _Item] = field(default_factory=dict)
    discounts: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """The subscription-level discounts, by id, each with the record it is read from (for its object)."""
    latest: Mapping[str, Any] | None = None
    """The last record's holder: the version's `latest_invoice`."""


@dataclass(frozen=True)
class _Start:
    """A discount a record shows for the first time, dated back to its own `start`."""

    at: datetime
    discount_id: str
    item_id: str | None
    """The item it is on; None for the subscription's."""
    holder: Mapping[str, Any]
    """The record that shows it (its object is read from there)."""
    taken: Mapping[str, _Taken]
    """Item id → what it took off that item's line there."""


# --- Reading the payloads ------------------------------------------------------------------


def _id(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) and found else None
    return None


def _ids(entries: Sequence[Any]) -> list[str]:
    return [found for found in map(_id, entries) if found is not None]


def _instant(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


def _optional_instant(value: Any) -> datetime | None:
    return None if value is None else _instant(value)


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (got {value.isoformat()})")
    return value.astimezone(UTC)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def invoice_fields(invoice: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an invoice `reconstruct` reads (a third of a current-API invoice): keep only this."""
    return {name: invoice[name] for name in _INVOICE_FIELDS if name in invoice}


def invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """The subscription an invoice bills: top-level (2020 API) or under `parent` (current API)."""
    details = _mapping(_mapping(invoice.get("parent")).get("subscription_details"))
    return _id(details.get("subscription")) or _id(invoice.get("subscription"))


def invoice_item_subscription(invoice_item: Mapping[str, Any]) -> str | None:
    """The subscription a (pending) invoice item belongs to: under `parent` (current API) or top-level (2020)."""
    details = _mapping(_mapping(invoice_item.get("parent")).get("subscription_details"))
    return _id(details.get("subscription")) or _id(invoice_item.get("subscription"))


def _item_line(line: Mapping[str, Any]) -> tuple[str | None, str | None, bool] | None:
    """(subscription, subscription item, proration) of a line billing a subscription item; None for any other.

    Current API: `parent.subscription_item_details`; a line of `invoice_item_details` is an
    invoice item that names no item (a one-off fee). 2020 API: `type = subscription`, or an
    `invoiceitem` proration naming its `subscription_item`.
    """
    parent = line.get("parent")
    if isinstance(parent, Mapping):
        if parent.get("type") != "subscription_item_details":
            return None
        details = _mapping(parent.get("subscription_item_details"))
        return _id(details.get("subscription")), _id(details.get("subscription_item")), bool(details.get("proration"))
    proration = bool(line.get("proration"))
    if line.get("type") != "subscription" and not (proration and line.get("subscription_item")):
        return None
    return _id(line.get("subscription")), _id(line.get("subscription_item")), proration


def _lines(invoice: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    lines = _mapping(invoice.get("lines"))
    if lines.get("has_more"):
        invoice_id = _id(invoice) or "?"
        raise UnresolvedStripeObject(
            f"invoice {invoice_id} lists only part of its lines: fetch them all "
            f"(GET /v1/invoices/{invoice_id}/lines) and call again",
            object_id=invoice_id,
            missing="lines",
        )
    return [line for line in lines.get("data") or [] if isinstance(line, Mapping)]


_OwnLine = tuple[int, Mapping[str, Any], str, bool]
"""(position on the invoice, line, subscription item id, proration) of a line billing an item of the subscription."""

_Invoiced = tuple[Mapping[str, Any], list[_OwnLine]]
"""An invoice and its lines that bill the subscription's items."""


def _own_lines(subscription_id: str, invoice: Mapping[str, Any]) -> Iterator[_OwnLine]:
    """(position, line, item id, proration) of every line of the invoice billing an item of this subscription.

    Nothing of a draft or void invoice. A line naming no subscription belongs to the invoice's.
    """
    if invoice.get("status") in IGNORED_INVOICE_STATUSES:
        return
    own_invoice = invoice_subscription(invoice) == subscription_id
    for position, line in enumerate(_lines(invoice)):
        found = _item_line(line)
        if found is None:
            continue
        named, item_id, proration = found
        if named == subscription_id if named is not None else own_invoice:
            yield position, line, item_id or _id(line) or f"line {position}", proration


def _billed_periods(invoice: Mapping[str, Any], own: Sequence[_OwnLine], rates: _Rates) -> list[_Billed]:
    """The invoice's regular lines of this subscription, grouped by `period.start`.

    Metered usage is billed in arrears: its line's period is the one before the
    licensed lines'. It rides with the licensed lines of its invoice, so it never
    makes a period of its own (which would replace the real one, billed on the
    previous invoice).
    """
    period_lines = [line for _, line, _, proration in own if not proration]
    metered = [_is_metered(rates(line)) for line in period_lines]
    starts = {_period_start(line) for line, usage in zip(period_lines, metered, strict=True) if not usage}
    if not starts:  # only metered lines: each period as billed
        starts = {_period_start(line) for line in period_lines}
        metered = [False] * len(period_lines)
    return [
        _Billed(
            start,
            invoice,
            tuple(
                line for line, usage in zip(period_lines, metered, strict=True) if usage or _period_start(line) == start
            ),
        )
        for start in sorted(starts)
    ]


def _period_start(line: Mapping[str, Any]) -> datetime:
    return _instant(_mapping(line.get("period"))["start"])


def _period_end(line: Mapping[str, Any]) -> datetime | None:
    return _optional_instant(_mapping(line.get("period")).get("end"))


def _recurring(rates: Mapping[str, Any]) -> Mapping[str, Any]:
    rate = _mapping(rates.get("price") or rates.get("plan"))
    return rate if "interval" in rate else _mapping(rate.get("recurring"))


def _is_metered(rates: Mapping[str, Any]) -> bool:
    return _recurring(rates).get("usage_type") == "metered"


def _latest_billing(invoices: Sequence[_Invoiced], rates: _Rates) -> list[_Billed]:
    """One billing per period start, sorted: a re-issued invoice (created later) replaces the earlier one.

    Ties on `created` go to the greater invoice id, so the input order never matters.
    """
    chosen: dict[datetime, _Billed] = {}
    for invoice, own in invoices:
        for billed in _billed_periods(invoice, own, rates):
            held = chosen.get(billed.period_start)
            if held is None or _issue_order(billed.invoice) > _issue_order(held.invoice):
                chosen[billed.period_start] = billed
    return [chosen[start] for start in sorted(chosen)]


def _issue_order(holder: Mapping[str, Any]) -> tuple[int, str]:
    return int(holder.get("created") or holder.get("date") or 0), _id(holder) or ""


# --- The records ---------------------------------------------------------------------------


def _rate_key(record: _Record, rates: _Rates) -> tuple[str | None, Any]:
    rate = rates(record.line)
    return _id(rate.get("price")) or _id(rate.get("plan")), record.line.get("quantity")


def _records(
    subscription_id: str,
    billings: Sequence[_Billed],
    invoices: Sequence[_Invoiced],
    invoice_items: Sequence[Mapping[str, Any]],
    rates: _Rates,
) -> list[_Record]:
    """Every record of the subscription's items, in the order they are applied.

    Regular lines from the billings (one invoice per period start); proration
    lines from every invoice of the subscription (not draft or void), and pending
    proration invoice items not on any of them. A proration of amount 0 (a
    change inside a trial, or at a period's last second) says nothing.
    """
    records: list[_Record] = []
    for billed in billings:
        order = _issue_order(billed.invoice)
        licensed_ends = [
            end for line in billed.lines if not _is_metered(rates(line)) and (end := _period_end(line)) is not None
        ]
        for position, line in enumerate(billed.lines):
            until = max(licensed_ends, default=None) if _is_metered(rates(line)) else _period_end(line)
            records.append(
                _Record(
                    billed.period_start,
                    until,
                    _item_id(line) or _id(line) or f"line {position}",
                    _BILLED,
                    line,
                    billed.invoice,
                    (*order, position),
                )
            )
    seen: set[str] = set()
    for invoice, own in sorted(invoices, key=lambda invoiced: _issue_order(invoiced[0])):
        order = _issue_order(invoice)
        for position, line, item_id, proration in own:
            if not proration:
                continue
            pending_item = _line_invoice_item(line)
            if pending_item is not None:
                seen.add(pending_item)
            record = _proration(line, item_id, invoice, (*order, position))
            if record is not None:
                records.append(record)
    for pending in sorted(invoice_items, key=_issue_order):
        details = _mapping(_mapping(pending.get("parent")).get("subscription_details"))
        pending_item_of = _id(details.get("subscription_item")) or _id(pending.get("subscription_item"))
        if (
            _id(pending) in seen
            or pending_item_of is None
            or not pending.get("proration")
            or invoice_item_subscription(pending) != subscription_id
        ):
            continue
        record = _proration(pending, pending_item_of, pending, (*_issue_order(pending), 0))
        if record is not None:
            records.append(record)
    records.sort(key=lambda record: (record.at, record.effect, record.order, record.item_id))
    return records


def _proration(
    line: Mapping[str, Any], item_id: str, holder: Mapping[str, Any], order: tuple[int, str, int]
) -> _Record | None:
    amount = int(line.get("amount") or 0)
    if amount == 0 or not line.get("period"):
        return None
    effect = _ADDED if amount > 0 else _REMOVED
    return _Record(_period_start(line), _period_end(line), item_id, effect, line, holder, order)


def _line_invoice_item(line: Mapping[str, Any]) -> str | None:
    details = _mapping(_mapping(line.get("parent")).get("subscription_item_details"))
    return _id(details.get("invoice_item")) or _id(line.get("invoice_item"))


def _item_id(line: Mapping[str, Any]) -> str | None:
    found = _item_line(line)
    return None if found is None else found[1]


# --- Trials --------------------------------------------------------------------------------


def _list_amount(rates: Mapping[str, Any], quantity: Any) -> Fraction | None:
    """What the line would bill without a trial; None when the price does not say."""
    for rate in (rates.get("price"), rates.get("plan")):
        if isinstance(rate, Mapping):
            try:
                return item_amount(rate, int(quantity or 0))
            except (UnresolvedStripeObject, ValueError, KeyError, TypeError):
                continue
    return None


def _is_trial(billed: _Billed, rates: _Rates) -> bool:
    """A trial period: every licensed line is billed 0 though its price is not (a free price is no trial)."""
    licensed = [(line, rates(line)) for line in billed.lines if not _is_metered(rates(line))]
    return (
        bool(licensed)
        and all(int(line.get("amount") or 0) == 0 for line, _ in licensed)
        and any(_list_amount(rate, line.get("quantity")) != 0 for line, rate in licensed)
    )


def _trials(
    subscription: Mapping[str, Any], billings: Sequence[_Billed], rates: _Rates
) -> list[tuple[datetime, datetime]]:
    """Every trial, (start, end), oldest first, from the trial lines and the current trial dates.

    A trial ends where the first paid period after its start begins (a trial
    extended, cut short or followed by a pause); with none, at the current
    `trial_end` when that is later, else where its line ends.
    """
    current_end = _optional_instant(subscription.get("trial_end"))
    starts: dict[datetime, datetime] = {}
    paid: list[datetime] = []
    for billed in billings:
        if _is_trial(billed, rates):
            ends = [end for line in billed.lines if (end := _period_end(line)) is not None]
            starts[billed.period_start] = max(ends, default=billed.period_start)
        else:
            paid.append(billed.period_start)
    if current_end is not None:
        first = subscription.get("trial_start") or subscription.get("start_date") or subscription.get("created")
        current_start = _optional_instant(first)
        if current_start is not None and current_start < current_end:
            starts.setdefault(current_start, current_end)
    trials: list[tuple[datetime, datetime]] = []
    for start in sorted(starts):
        if trials and start < trials[-1][1]:
            continue  # the same trial, billed again (changed or extended)
        end = next((instant for instant in sorted(paid) if instant > start), None)
        if end is None:
            end = current_end if current_end is not None and current_end > start else starts[start]
        trials.append((start, end))
    return trials


def _trial_at(trials: Sequence[tuple[datetime, datetime]], instant: datetime) -> tuple[str, tuple[Any, Any]]:
    """The status at `instant` and the trial dates a version then carries (the latest trial begun)."""
    latest: tuple[datetime, datetime] | None = None
    for start, end in trials:
        if start > instant:
            break
        latest = (start, end)
    if latest is None:
        return "active", (None, None)
    dates = (int(latest[0].timestamp()), int(latest[1].timestamp()))
    return ("trialing" if instant < latest[1] else "active"), dates


# --- Discounts -----------------------------------------------------------------------------


def _known_discounts(*holders: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Every expanded discount object found in the holders (invoice, lines, subscription, items), by id.

    The first holder wins, so the invoice's own copy is preferred to the current subscription's.
    """
    known: dict[str, Mapping[str, Any]] = {}

    def note(entry: Any) -> None:
        discount_id = _id(entry)
        if isinstance(entry, Mapping) and discount_id is not None:
            known.setdefault(discount_id, entry)

    for holder in holders:
        note(holder.get("discount"))
        for entry in holder.get("discounts") or []:
            note(entry)
        for amount in list(holder.get("discount_amounts") or []) + list(holder.get("total_discount_amounts") or []):
            note(_mapping(amount).get("discount"))
    return known


def _discount_ids(holder: Mapping[str, Any]) -> list[str]:
    """Ids of the discounts a line or invoice names, in order, without repeats."""
    entries = list(holder.get("discounts") or [])
    if holder.get("discount") is not None:
        entries.append(holder["discount"])
    entries += [_mapping(amount).get("discount") for amount in holder.get("discount_amounts") or []]
    ids: list[str] = []
    for entry in entries:
        discount_id = _id(entry)
        if discount_id is not None and discount_id not in ids:
            ids.append(discount_id)
    return ids


def _taken(line: Mapping[str, Any], invoice: Mapping[str, Any] | None = None) -> dict[str, _Taken]:
    """Discount id → what it took off the line, each on what the ones before it left (their order)."""
    taken: dict[str, _Taken] = {}
    left = int(line.get("amount") or 0)
    for entry in line.get("discount_amounts") or []:
        discount_id = _id(_mapping(entry).get("discount"))
        amount = int(_mapping(entry).get("amount") or 0)
        if discount_id is not None and discount_id not in taken:
            taken[discount_id] = _Taken(amount, left, invoice)
        left -= amount
    return taken


def _percentage(shares: Sequence[_Taken]) -> Fraction | None:
    """The one percentage that took exactly each share off what was left on its line, with two decimals at
    most (Stripe's `percent_off`); None when the shares are not all one such percentage.

    Exactly, not to the cent: any amount off a small line is some percentage
    rounded, and an amount-off coupon must not be taken for one.
    """
    percents = {Fraction(share.amount * 100, share.base) for share in shares if share.base > 0}
    if len(percents) != 1 or len(shares) != sum(1 for share in shares if share.base > 0):
        return None
    (percent,) = percents
    return percent if (percent * 100).denominator == 1 and 0 < percent <= 100 else None


def _amounts_off(
    subscription_id: str, invoices: Sequence[Mapping[str, Any]], as_invoiced: AsInvoiced
) -> frozenset[str]:
    """The discounts of `as_invoiced` that took amounts no one percentage explains, over every period
    line of the subscription's invoices: an amount off, even where one invoice's lines alone could be
    read as a percentage (10.00 off a 16.00 week is 62.5%, until the price changes)."""
    if not as_invoiced:
        return frozenset()
    shares: dict[str, list[_Taken]] = {}
    for invoice in invoices:
        for _, line, _, proration in _own_lines(subscription_id, invoice):
            if not proration:
                for discount_id, taken in _taken(line).items():
                    if discount_id in as_invoiced and taken.amount:
                        shares.setdefault(discount_id, []).append(taken)
    return frozenset(discount_id for discount_id, taken in shares.items() if _percentage(taken) is None)


def _discount_coupon(discount: Mapping[str, Any]) -> Any:
    coupon = discount.get("coupon")
    return coupon if coupon is not None else _mapping(discount.get("source")).get("coupon")


def _coupon_as_invoiced(
    discount: Any,
    taken_by: Sequence[_Item],
    *,
    currency: str | None,
    known: Mapping[str, Any],
    restrict: bool,
    percentage: bool = True,
) -> dict[str, Any]:
    """`discount` with a coupon worth what the invoices say it took off `taken_by`.

    What it took off each item's last billed line is the evidence. When one
    percentage (two decimals at most) took exactly every amount off what was
    left on its line, the coupon is that `percent_off`; else it is an
    `amount_off` of what it took off the latest invoice that billed one of the
    items, off all its lines: Stripe takes an amount off once per invoice,
    whatever the lines' intervals (`ledger.mrr` reads it per the shortest one).
    `restrict` (a subscription-level discount): an item billed on an invoice
    that listed the discount but took nothing off it is left out (`applies_to`,
    the products of the others); an item not billed since the discount began
    is kept in. `percentage` False: the discount's whole history rules a
    percentage out (`_amounts_off`).
    """
    discount_id = _id(discount) or ""
    entry = dict(discount) if isinstance(discount, Mapping) else {"id": discount_id, "object": "discount"}
    shares: list[_Taken] = []
    kept: list[_Item] = []
    for item in taken_by:
        taken = item.invoiced.get(discount_id)
        listed = item.billed_on is not None and discount_id in _discount_ids(item.billed_on)
        if restrict and (taken is None or taken.amount == 0) and listed:
            continue  # the invoice applied it, and it took nothing off this item
        kept.append(item)
        if taken is not None and taken.amount:
            shares.append(taken)
    percent = _percentage(shares) if percentage else None
    amount_off = None
    if percent is None:  # all it took off the latest invoice, the lines of items gone since included
        latest = max((share.invoice for share in shares if share.invoice is not None), key=_issue_order, default=None)
        if latest is None:
            amount_off = sum(share.amount for share in shares)
        else:
            taken_off = [_taken(line).get(discount_id) for line in _lines(latest)]
            amount_off = sum(taken.amount for taken in taken_off if taken is not None)
    products = {_id(_mapping(item.rate.get("price") or item.rate.get("plan")).get("product")) for item in kept}
    applies_to = None
    if restrict and len(kept) < len(taken_by) and None not in products:
        applies_to = {"products": sorted(str(product) for product in products)}
    current = _discount_coupon(entry)
    coupon: dict[str, Any] = dict(known)
    if isinstance(current, Mapping):
        coupon.update(current)
    coupon_id = _id(current) or _id(known) or f"{discount_id}{AS_INVOICED_SUFFIX}"
    invoices = sorted(
        {_id(item.billed_on) or "" for item in taken_by if item.billed_on and item.invoiced.get(discount_id)}
    )
    coupon.update(
        id=coupon_id,
        object="coupon",
        # A percentage as Stripe writes it: a whole number, else a decimal of two places.
        percent_off=None if percent is None else (int(percent) if percent.denominator == 1 else float(percent)),
        amount_off=amount_off,
        currency=None if amount_off is None else currency,
        currency_options={},
        duration="repeating" if entry.get("end") is not None else "forever",
        duration_in_months=None,
        applies_to=applies_to,
    )
    coupon[AS_INVOICED_MARK] = invoices
    if "coupon" in entry:
        entry["coupon"] = coupon
    else:
        entry["source"] = {**_mapping(entry.get("source")), "type": "coupon", "coupon": coupon}
    return entry


def named_discounts(
    subscription: Mapping[str, Any], invoices: Sequence[Mapping[str, Any]]
) -> dict[str, Mapping[str, Any] | None]:
    """Every discount the subscription and its invoices (not draft or void) name, by id: its object where
    one of them carries it expanded, else None. What a caller checks before `reconstruct` (`as_invoiced`)."""
    holders: list[Mapping[str, Any]] = [subscription, *_items_of(subscription)]
    for invoice in invoices:
        if invoice.get("status") not in IGNORED_INVOICE_STATUSES:
            holders += [invoice, *_lines(invoice)]
    named: dict[str, Mapping[str, Any] | None] = {}
    for holder in holders:
        for discount_id in _discount_ids(holder):
            named.setdefault(discount_id, None)
        for discount_id, discount in _known_discounts(holder).items():
            named[discount_id] = named.get(discount_id) or discount
    return named


def unvalued_coupon(discount: Mapping[str, Any]) -> str | None:
    """The id of the discount's coupon when the discount does not carry it whole (with `percent_off` or
    `amount_off`): named by id (2025-09-30.clover), or stripped. None when it does."""
    coupon = _discount_coupon(discount)
    if isinstance(coupon, Mapping) and (coupon.get("percent_off") is not None or coupon.get("amount_off") is not None):
        return None
    return _id(coupon)


def coupons_as_invoiced(versions: Sequence[HistoricalVersion]) -> dict[str, dict[str, Any]]:
    """The coupons Stripe has deleted that the versions value as invoiced, by id, as the latest version
    values each: what a version naming one of their discounts by id (a webhook's) is valued with.

    A coupon that took nothing is left out (a discount met only on trial invoices, or on items it does
    not reduce): 0 off says nothing of the coupon. The products it was found to reduce are kept only
    when there are some.
    """
    found: dict[str, dict[str, Any]] = {}
    for version in versions:
        holders = [version.subscription, *_items_of(version.subscription)]
        for discount in _known_discounts(*holders).values():
            coupon = _discount_coupon(discount)
            if (
                isinstance(coupon, Mapping)
                and coupon.get(AS_INVOICED_MARK) is not None
                and coupon.get("deleted")
                and (coupon.get("percent_off") is not None or int(coupon.get("amount_off") or 0) > 0)
            ):
                restricted = _mapping(coupon.get("applies_to")).get("products")
                found[str(coupon["id"])] = dict(coupon, applies_to={"products": restricted} if restricted else None)
    return found


def discounts_carried(versions: Sequence[HistoricalVersion]) -> dict[str, dict[str, Any]]:
    """The discounts the versions carry whole, by id, as the latest version carries each: what a version
    naming one by id (a webhook's) is valued with when nothing else has it (Stripe has no reading a
    discount by id). A discount valued from invoices alone (`… (as invoiced)`) that took nothing is left
    out: 0 off says nothing of it."""
    found: dict[str, dict[str, Any]] = {}
    for version in versions:
        holders = [version.subscription, *_items_of(version.subscription)]
        for discount_id, discount in _known_discounts(*holders).items():
            coupon = _discount_coupon(discount)
            guessed = isinstance(coupon, Mapping) and str(coupon.get("id")).endswith(AS_INVOICED_SUFFIX)
            if guessed and coupon.get("percent_off") is None and not int(coupon.get("amount_off") or 0):
                continue
            found[discount_id] = dict(discount)
    return found


# --- Prices --------------------------------------------------------------------------------


def _items_of(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = _mapping(subscription.get("items"))
    return [item for item in items.get("data") or [] if isinstance(item, Mapping)]


def item_prices(subscription: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The price (and legacy plan) objects a subscription's items carry whole, by id: a fallback for the lookup."""
    found: dict[str, Mapping[str, Any]] = {}
    for item in _items_of(subscription):
        for rate in (item.get("price"), item.get("plan")):
            rate_id = _id(rate)
            if isinstance(rate, Mapping) and rate_id is not None:
                found.setdefault(rate_id, rate)
    return found


def _rate_reader(prices: PriceLookup, current: Mapping[str, Any]) -> _Rates:
    """Reads a line's price: the lookup, then the current subscription's; each id looked up once."""
    current_prices = item_prices(current)
    seen: dict[str, Mapping[str, Any] | None] = {}

    def stored(price_id: str) -> Mapping[str, Any] | None:
        if price_id not in seen:
            seen[price_id] = prices(price_id) or current_prices.get(price_id)
        return seen[price_id]

    # A line is read many times (grouping, trials, records, versions): once is enough. Lines live as long as
    # the invoices the caller holds, so their ids stay theirs while the reader is used.
    read: dict[int, dict[str, Any]] = {}

    def rates(line: Mapping[str, Any]) -> dict[str, Any]:
        found = read.get(id(line))
        if found is None:
            found = read[id(line)] = _line_rates(line, stored)
        return found

    return rates


def _line_rates(line: Mapping[str, Any], stored: PriceLookup) -> dict[str, Any]:
    """The item's `price` (and legacy `plan`) for a line or invoice item.

    2020 lines carry whole objects. Current lines name the price by id under
    `pricing.price_details`; it comes from the lookup, else from the current
    subscription, else stays `{"id": …}` for the engine to resolve or report.
    """
    if not isinstance(line.get("parent"), Mapping):
        rates = {key: line[key] for key in ("price", "plan") if isinstance(line.get(key), Mapping)}
        if rates:
            return rates
    price = _mapping(_mapping(line.get("pricing")).get("price_details")).get("price")
    if price is None:
        price = line.get("price")
    if isinstance(price, Mapping):
        return {"price": price}
    price_id = _id(price)
    if price_id is None:
        raise UnresolvedStripeObject(
            f"invoice line {_id(line) or '?'} names no price: fetch the invoice lines and call again",
            object_id=_id(line) or "",
            missing="price",
        )
    found = stored(price_id)
    return {"price": found if found is not None else {"id": price_id}}


# --- Applying the records ------------------------------------------------------------------


class _Reader:
    """What one subscription's records say, read against its current state."""

    def __init__(
        self,
        current: Mapping[str, Any],
        rates: _Rates,
        as_invoiced: AsInvoiced,
        invoices: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.current = current
        self.rates = rates
        self.as_invoiced = as_invoiced
        self.amounts = _amounts_off(str(current.get("id")), invoices, as_invoiced)
        self.current_discounts = _known_discounts(current, *_items_of(current))
        self.currency = _currency_of(current)

    def expanded(self, discount_id: str, *holders: Mapping[str, Any]) -> Any:
        """The discount object from the holders (an invoice and its line), else the current subscription's."""
        for holder in holders:
            found = _known_discounts(holder).get(discount_id)
            if found is not None:
                return found
        return self.current_discounts.get(discount_id, discount_id)

    def item(self, record: _Record, previous: _Item | None) -> _Item:
        line, rate = record.line, self.rates(record.line)
        quantity = None if _is_metered(rate) else line.get("quantity")
        period = _mapping(line.get("period"))
        until = record.until if record.until is None or record.until > record.at else None
        if record.effect == _BILLED:
            on_invoice = _discount_ids(record.holder)
            discounts = tuple(self.expanded(d, record.holder, line) for d in _discount_ids(line) if d not in on_invoice)
            invoiced: Mapping[str, _Taken] = _taken(line, record.holder)
            billed_on: Mapping[str, Any] | None = record.holder
        else:  # a debit: the item keeps its discounts (and what they last took) through the change
            discounts = previous.discounts if previous is not None else ()
            invoiced = previous.invoiced if previous is not None else {}
            billed_on = previous.billed_on if previous is not None else None
        return _Item(
            record.item_id,
            rate,
            quantity,
            discounts,
            invoiced,
            (period.get("start"), period.get("end")),
            until,
            record.holder,
            billed_on,
        )

    def apply(self, state: _State, records: Sequence[_Record]) -> str:
        """Apply the records of one instant; the source of the version they make.

        A credit cancels a debit, else a billed period, of one item at the same
        price and quantity: two changes at once, the second undoing what the
        first added or billed (a plan switch billed at once, then a quantity
        change in the same second). What is left billed wins over what is left
        debited; a billed period all credited removes the item. The invoice of
        a billed period, or one made by the change itself, says the
        subscription's discounts from then on.
        """
        by_item: dict[str, list[_Record]] = {}
        for record in records:
            by_item.setdefault(record.item_id, []).append(record)
        for item_id, own in by_item.items():
            credits = [record for record in own if record.effect == _REMOVED]
            debits = [record for record in own if record.effect == _ADDED]
            billed = [record for record in own if record.effect == _BILLED]
            was_billed = bool(billed)
            for added in (debits, billed):
                for record in list(added):
                    key = _rate_key(record, self.rates)
                    match = next((c for c in credits if _rate_key(c, self.rates) == key), None)
                    if match is not None:
                        credits.remove(match)
                        added.remove(record)
            if billed or debits:
                state.items[item_id] = self.item((billed or debits)[-1], state.items.get(item_id))
            elif credits or was_billed:
                state.items.pop(item_id, None)
        carrier = _carrier(records)
        if carrier is not None:
            state.discounts = dict.fromkeys(_discount_ids(carrier), carrier)
        on_invoices = [record.holder for record in records if record.holder.get("object") != "invoiceitem"]
        if on_invoices:
            state.latest = max(on_invoices, key=_issue_order)
        holder = carrier or max((record.holder for record in records), key=_issue_order)
        kind = "invoiceitem" if holder.get("object") == "invoiceitem" else "invoice"
        return f"{kind}:{_id(holder)}"

    def start(self, state: _State, start: _Start) -> None:
        """A discount from its own `start`, before the record that shows it."""
        for item_id, amount in start.taken.items():
            item = state.items.get(item_id)
            if item is not None:
                state.items[item_id] = replace(item, invoiced={**item.invoiced, start.discount_id: amount})
        # Discounts apply in their list's order: the new one takes its place as the record lists them.
        order = _discount_ids(start.holder)

        def place(discount_id: str) -> int:
            return order.index(discount_id) if discount_id in order else len(order)

        if start.item_id is None:
            discounts = {**state.discounts, start.discount_id: start.holder}
            state.discounts = {d: discounts[d] for d in sorted(discounts, key=place)}
            return
        item = state.items.get(start.item_id)
        if item is not None and start.discount_id not in _ids(item.discounts):
            found = self.expanded(start.discount_id, start.holder)
            ordered = sorted((*item.discounts, found), key=lambda entry: place(_id(entry) or ""))
            state.items[start.item_id] = replace(item, discounts=tuple(ordered))

    def signature(self, status: str, state: _State) -> tuple[Any, ...]:
        """`_signature` of the version `payload` builds for this state, without building it."""
        items = tuple(sorted(item.key() for item in state.items.values()))
        return (status, False, False, items, tuple(sorted(state.discounts)))

    def payload(self, status: str, trial: tuple[Any, Any], state: _State) -> dict[str, Any]:
        """The current subscription, with the items, discounts, status and trial the records say.

        The payload shares its objects with `current`, the invoices and the price
        lookup: the caller copies it before keeping it.
        """
        current = self.current
        subscription_id = str(current["id"])
        items = [self.item_payload(subscription_id, item, list(state.items.values())) for item in state.items.values()]
        discounts = [
            self.valued(self.expanded(d, holder), list(state.items.values()), restrict=True)
            for d, holder in state.discounts.items()
        ]
        version = dict(current)
        version_items = dict(_mapping(version.get("items")))
        version_items.update(object="list", data=items, has_more=False)
        if "total_count" in version_items:
            version_items["total_count"] = len(items)
        version.update(
            status=status,
            items=version_items,
            discounts=discounts,
            canceled_at=None,
            ended_at=None,
            cancel_at=None,
            cancel_at_period_end=False,
            pause_collection=None,
            pending_update=None,
            trial_start=trial[0],
            trial_end=trial[1],
            latest_invoice=_id(state.latest) if state.latest is not None else current.get("latest_invoice"),
        )
        if "discount" in version:
            version["discount"] = None  # everything is in `discounts`; ledger.mrr reads both
        if not items and not version.get("currency") and self.currency:
            version["currency"] = self.currency  # nothing left to read it from (2020 API)
        if "current_period_start" in version and items:  # 2020 API: the period sits on the subscription
            version.update(current_period_start=items[0]["current_period_start"])
            version.update(current_period_end=items[0]["current_period_end"])
        if "plan" in version:  # 2020 API: a single-item subscription repeats its plan on top
            single = items[0] if len(items) == 1 else None
            version["plan"] = None if single is None else single.get("plan") or single.get("price")
            version["quantity"] = None if single is None else single.get("quantity")
        return version

    def item_payload(self, subscription_id: str, item: _Item, every: list[_Item]) -> dict[str, Any]:
        return {
            "id": item.item_id,
            "object": "subscription_item",
            "subscription": subscription_id,
            **item.rate,
            # A metered item has no quantity in Stripe; the line's is the period's usage.
            "quantity": item.quantity,
            "discounts": [self.valued(d, [item], restrict=False) for d in item.discounts],
            "current_period_start": item.period[0],
            "current_period_end": item.period[1],
        }

    def valued(self, discount: Any, taken_by: list[_Item], *, restrict: bool) -> Any:
        """The discount as it is, or valued as invoiced when Stripe no longer has it (or its coupon)."""
        discount_id = _id(discount)
        if discount_id is None or discount_id not in self.as_invoiced:
            return discount
        known = self.as_invoiced[discount_id]
        return _coupon_as_invoiced(
            discount,
            taken_by,
            currency=self.currency,
            known=known,
            restrict=restrict,
            percentage=discount_id not in self.amounts,
        )

    def current_payload(self, state: _State) -> dict[str, Any]:
        """The current subscription, its discounts that Stripe no longer has valued as last invoiced."""
        current = self.current
        if not self.as_invoiced:
            return dict(current)
        last = [state.items[item_id] for item_id in map(_id, _items_of(current)) if item_id in state.items]
        version = dict(current)
        if isinstance(current.get("discounts"), list):
            version["discounts"] = [self.valued(d, last, restrict=True) for d in current["discounts"]]
        if current.get("discount") is not None:
            version["discount"] = self.valued(current["discount"], last, restrict=True)
        items = []
        for item in _items_of(current):
            held = state.items.get(_id(item) or "")
            entries = item.get("discounts") or []
            items.append(
                {**item, "discounts": [self.valued(d, [held] if held else [], restrict=False) for d in entries]}
            )
        if isinstance(current.get("items"), Mapping):
            version["items"] = {**current["items"], "data": items}
        return version


def _currency_of(subscription: Mapping[str, Any]) -> str | None:
    currency = subscription.get("currency")
    if not currency:
        for item in _items_of(subscription):
            rate = _mapping(item.get("price") or item.get("plan"))
            currency = rate.get("currency")
            if currency:
                break
    return str(currency).lower() if currency else None


# --- What the MRR rules read ---------------------------------------------------------------


def _signature(subscription: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything of a version the MRR rules read: two versions with one signature are worth the same.

    Status, paused collection, a scheduled cancellation, each item's price id,
    quantity and discount ids, and the subscription's discount ids.
    """
    items = sorted(
        (
            _id(item.get("price")) or _id(item.get("plan")) or "",
            int(item["quantity"]) if item.get("quantity") is not None else 1,
            tuple(sorted(_discount_ids(item))),
        )
        for item in _items_of(subscription)
    )
    if not _items_of(subscription) and isinstance(subscription.get("plan"), Mapping):
        items = [(_id(subscription["plan"]) or "", int(subscription.get("quantity") or 1), ())]
    return (
        subscription.get("status"),
        subscription.get("pause_collection") is not None,
        bool(subscription.get("cancel_at_period_end")) or subscription.get("cancel_at") is not None,
        tuple(items),
        tuple(sorted(_discount_ids(subscription))),
    )


def _current_observed_at(subscription: Mapping[str, Any], read_at: datetime) -> datetime:
    """`read_at`, or for a canceled subscription its end (`ended_at`, else `canceled_at`) when earlier."""
    if subscription.get("status") == "canceled":
        ended = subscription.get("ended_at") or subscription.get("canceled_at")
        if ended is not None:
            return min(read_at, _instant(ended))
    return read_at


# --- The history ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Moment:
    """One instant at which the records may change what the subscription is worth."""

    at: datetime
    status: str
    trial: tuple[Any, Any]
    state: _State
    source: str


def _carrier(records: Sequence[_Record]) -> Mapping[str, Any] | None:
    """The invoice whose `discounts` are the subscription's from these records' instant on: the one billing
    a period, else one made by the change itself (`subscription_update`, created at that instant). A
    later change's invoice also bills the prorations still pending from earlier ones (on a yearly
    plan, months earlier): its `discounts` are those of its own instant, not of theirs."""
    carrier = next((record.holder for record in records if record.effect == _BILLED), None)
    if carrier is None:
        carrier = next(
            (
                r.holder
                for r in records
                if r.holder.get("billing_reason") == CHANGE_INVOICE
                and _issue_order(r.holder)[0] == int(r.at.timestamp())
            ),
            None,
        )
    return carrier


def _batches(records: Sequence[_Record]) -> list[tuple[datetime, list[_Record]]]:
    batches: list[tuple[datetime, list[_Record]]] = []
    for record in records:
        if batches and batches[-1][0] == record.at:
            batches[-1][1].append(record)
        else:
            batches.append((record.at, [record]))
    return batches


def _discount_starts(
    batches: Sequence[tuple[datetime, list[_Record]]], reader: _Reader, *, end: datetime
) -> list[_Start]:
    """Discounts a record shows for the first time whose own `start` is earlier, after the record before.

    A coupon applied in the middle of a period first shows on the next invoice;
    the discount object (on that invoice, or on the current subscription, the
    last record) says when it was applied. Only discounts whose object is at
    hand can be dated so; one named by id alone dates from the record.
    """
    starts: list[_Start] = []
    shown: tuple[datetime, list[str]] | None = None
    items: dict[str, tuple[datetime, list[str]]] = {}

    def dated(discount_id: str, since: datetime, until: datetime, *holders: Mapping[str, Any]) -> datetime | None:
        found = reader.expanded(discount_id, *holders)
        start = _optional_instant(found.get("start")) if isinstance(found, Mapping) else None
        return start if start is not None and since < start < until else None

    for instant, batch in batches:
        carrier = _carrier(batch)
        billed = [record for record in batch if record.effect == _BILLED]
        if carrier is not None:
            ids = _discount_ids(carrier)
            since, before = shown if shown is not None else (instant, ids)
            for discount_id in (d for d in ids if d not in before):
                start = dated(discount_id, since, instant, carrier)
                if start is not None:
                    taken = {
                        r.item_id: t for r in billed if (t := _taken(r.line, r.holder).get(discount_id)) is not None
                    }
                    starts.append(_Start(start, discount_id, None, carrier, taken))
            shown = (instant, ids)
        for record in batch:
            if record.effect == _BILLED:
                on_invoice = _discount_ids(record.holder)
                ids = [d for d in _discount_ids(record.line) if d not in on_invoice]
                since, before = items.get(record.item_id, (instant, ids))
                for discount_id in (d for d in ids if d not in before):
                    start = dated(discount_id, since, instant, record.holder, record.line)
                    if start is not None:
                        shown_taken = _taken(record.line, record.holder).get(discount_id)
                        taken = {record.item_id: shown_taken} if shown_taken is not None else {}
                        starts.append(_Start(start, discount_id, record.item_id, record.holder, taken))
                items[record.item_id] = (instant, ids)
            elif record.effect == _ADDED:  # a proration line shows no discount: a new item has none yet
                items.setdefault(record.item_id, (instant, []))
    current = reader.current
    since, before = shown if shown is not None else (end, [])
    for discount_id in (d for d in _discount_ids(current) if d not in before):
        start = dated(discount_id, since, end, current)
        if start is not None:
            starts.append(_Start(start, discount_id, None, current, {}))
    for item in _items_of(current):
        ids = _discount_ids(item)
        since, before = items.get(_id(item) or "", (end, ids))
        for discount_id in (d for d in ids if d not in before):
            start = dated(discount_id, since, end, item)
            if start is not None:
                starts.append(_Start(start, discount_id, _id(item), item, {}))
    return sorted(starts, key=lambda start: (start.at, start.discount_id))


def _moments(
    records: Sequence[_Record],
    trials: Sequence[tuple[datetime, datetime]],
    reader: _Reader,
    *,
    lasting: frozenset[str],
    end: datetime,
) -> Iterator[_Moment]:
    """The state at every instant a record, a discount's start, an item's billed end or a trial's start
    dates, oldest first.

    An item the current subscription no longer has ends with its billed period
    (unless a later record bills it again); one it still has lasts. Ends and
    trial starts after `end` (the current state's date) are left to it.
    """
    state = _State()
    batches = _batches(records)
    starts = _discount_starts(batches, reader, end=end)
    trial_starts = sorted(start for start, _ in trials)
    index = started = 0
    last: datetime | None = None
    while True:
        candidates = [batches[index][0]] if index < len(batches) else []
        if started < len(starts):
            candidates.append(starts[started].at)
        ends = [item.until for key, item in state.items.items() if key not in lasting and item.until is not None]
        if ends and min(ends) < end:
            candidates.append(min(ends))
        upcoming = [start for start in trial_starts if (last is None or start > last) and start < end]
        if upcoming and state.items:  # a trial begun without a record of its own (flexible billing)
            candidates.append(upcoming[0])
        if not candidates:
            return
        instant = min(candidates)
        source = ""
        for key in [key for key in state.items if key not in lasting]:
            until = state.items[key].until
            if until is not None and until <= instant:
                source = source or f"invoice:{_id(state.items[key].holder)}"
                del state.items[key]
        if index < len(batches) and batches[index][0] == instant:
            source = reader.apply(state, batches[index][1])
            index += 1
        while started < len(starts) and starts[started].at == instant:
            reader.start(state, starts[started])
            holder = starts[started].holder
            source = source or (f"invoice:{_id(holder)}" if holder is not reader.current else CURRENT_SOURCE)
            started += 1
        status, trial = _trial_at(trials, instant)
        yield _Moment(instant, status, trial, state, source or CURRENT_SOURCE)
        last = instant


def _history(
    reader: _Reader, invoices: Sequence[Mapping[str, Any]], invoice_items: Sequence[Mapping[str, Any]], *, end: datetime
) -> Iterator[_Moment]:
    """The moments of the current subscription's records, up to `end` (its own date) for what no record dates."""
    subscription = reader.current
    subscription_id = str(subscription["id"])
    own = [(invoice, list(_own_lines(subscription_id, invoice))) for invoice in invoices]
    billings = _latest_billing(own, reader.rates)
    records = _records(subscription_id, billings, own, invoice_items, reader.rates)
    trials = _trials(subscription, billings, reader.rates)
    lasting = frozenset(item_id for item_id in map(_id, _items_of(subscription)) if item_id is not None)
    return _moments(records, trials, reader, lasting=lasting, end=end)


@dataclass(frozen=True)
class Billed:
    """What one paid invoice says a subscription's items were from `at` on (`billed_items`)."""

    at: datetime
    items: frozenset[tuple[str, int]]
    """(price id, quantity) of each line."""
    regular: bool
    """Regular lines bill every item the subscription had then; proration debits only what a change added."""
    discounts: frozenset[str]
    """The discounts that took something off these lines."""
    named: frozenset[str]
    """Every discount the invoice names, on itself or on any line."""
    amount: int
    """What the lines bill, before discounts: 0 for a trial's."""


@dataclass(frozen=True)
class VersionItem:
    """One item of a stored subscription version, as `Billed` is compared with it."""

    price_id: str | None
    quantity: int | None
    """None for a metered item: its lines bill any quantity."""
    interval: tuple[Any, Any]
    """(interval, count) of its price (or legacy plan); (None, None) when the price is not expanded."""


def version_items(subscription: Mapping[str, Any]) -> list[VersionItem]:
    """The items of a subscription version, read for comparison with what its invoices bill."""
    found = []
    for item in _items_of(subscription):
        price = item.get("price") if isinstance(item.get("price"), Mapping) else item.get("plan")
        recurring = _mapping(price).get("recurring")
        terms = _mapping(recurring) if isinstance(recurring, Mapping) else _mapping(price)
        found.append(
            VersionItem(
                _id(item.get("price")) or _id(item.get("plan")),
                item.get("quantity"),
                (terms.get("interval"), terms.get("interval_count")),
            )
        )
    return found


def billed_items(invoice: Mapping[str, Any]) -> list[Billed]:
    """What a paid invoice's lines for its own subscription say of its items, by period start: its regular
    lines (one `Billed` per period they bill) and its proration debits (what a change added, from the
    change's instant). Empty for an invoice that is not paid, bills no subscription or lists only part
    of its lines. The worker compares it with the ledger (`worker.reconcile.contradicted_by_invoices`)."""
    subscription_id = invoice_subscription(invoice)
    lines = _mapping(invoice.get("lines"))
    if subscription_id is None or invoice.get("status") != "paid" or lines.get("has_more"):
        return []
    groups: dict[tuple[datetime, bool], tuple[set[tuple[str, int]], set[str], list[int]]] = {}
    named = frozenset(_discount_ids(invoice)).union(*(_discount_ids(line) for line in _lines(invoice)))
    for _, line, _, proration in _own_lines(subscription_id, invoice):
        if proration and int(line.get("amount") or 0) <= 0:
            continue  # a credit: what a change removed
        price = _mapping(_mapping(line.get("pricing")).get("price_details")).get("price")
        price_id = _id(price) or _id(line.get("price")) or _id(line.get("plan"))
        if price_id is None:
            continue
        items, discounts, amounts = groups.setdefault((_period_start(line), not proration), (set(), set(), []))
        items.add((price_id, int(line.get("quantity") or 0)))
        discounts.update(discount_id for discount_id, taken in _taken(line).items() if taken.amount)
        amounts.append(int(line.get("amount") or 0))
    return [
        Billed(at, frozenset(items), regular, frozenset(discounts), named, sum(amounts))
        for (at, regular), (items, discounts, amounts) in sorted(groups.items())
    ]


def reconstruct(
    subscription: Mapping[str, Any],
    invoices: Sequence[Mapping[str, Any]],
    *,
    prices: PriceLookup,
    read_at: datetime,
    invoice_items: Sequence[Mapping[str, Any]] = (),
    as_invoiced: AsInvoiced | None = None,
) -> list[HistoricalVersion]:
    """The subscription's versions over time, oldest first, strictly increasing in `observed_at`.

    Records are the lines of the subscription's invoices (not draft or void) and
    its pending proration `invoice_items`: a regular line bills an item for a
    period (a re-issued invoice replaces the earlier one for its period start),
    a proration pair dates a change at its `period.start`. A version is kept at
    every instant a record, an item's billed end or a trial's start changes what
    the MRR rules read; the current subscription comes last unless it adds
    nothing. Discounts named in `as_invoiced` are valued from what the invoices
    say they took. The input order of `invoices` does not matter. Raises
    `ledger.mrr.UnresolvedStripeObject` for an invoice whose lines are only
    partly listed.
    """
    read_at = _aware(read_at, "read_at")
    subscription_id = subscription.get("id")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise ValueError("subscription has no id")
    reader = _Reader(subscription, _rate_reader(prices, subscription), as_invoiced or {}, invoices)
    end = _current_observed_at(subscription, read_at)
    versions: list[HistoricalVersion] = []
    last: tuple[Any, ...] | None = None
    state = _State()
    for moment in _history(reader, invoices, invoice_items, end=end):
        state = moment.state
        if not versions and not state.items:
            continue  # nothing known yet (a credit before any billed period)
        # Most records bill what the previous ones did: compared before a payload is built.
        signature = reader.signature(moment.status, state)
        if signature == last:
            continue
        last = signature
        payload = reader.payload(moment.status, moment.trial, state)
        versions.append(HistoricalVersion(jsoncodec.copy(payload), moment.at, moment.source))
    if versions and last == _signature(subscription):
        return versions
    observed_at = end
    if versions and observed_at <= versions[-1].observed_at:
        # Stripe never bills a period after the subscription ended or after "now"; if an
        # invoice says so anyway, the current state still comes last (its churn keeps its date).
        observed_at = versions[-1].observed_at + NEXT_INSTANT
    current = reader.current_payload(state)
    versions.append(HistoricalVersion(jsoncodec.copy(current), observed_at, CURRENT_SOURCE))
    return versions
