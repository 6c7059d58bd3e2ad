"""A subscription's past, rebuilt from its invoices: docs/history.md.

Stripe keeps only a subscription's current state, and its Events API only the
last 30 days. Every renewal invoice, though, says what the subscription was
billed for over one period: its items (price and quantity) and the discounts
that applied. Read in order, the invoices give one version of the subscription
per billing period; the subscription as read now is the last version. The
versions feed the same timeline (`ledger.timeline.Snapshot`) as webhook
events do, so backfilled history and live events are valued by one set of
rules.

Pure: no I/O. Prices named only by id (current API lines) come from the
caller's `prices` lookup; discounts not expanded on the invoice stay ids, which
the engine resolves from stored objects later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger import jsoncodec
from ledger.mrr import UnresolvedStripeObject

PriceLookup = Callable[[str], Mapping[str, Any] | None]
"""Stored price objects by id (with `tiers` when tiered); None when the price is not stored."""

IGNORED_INVOICE_STATUSES = frozenset({"draft", "void"})
"""A draft may still change and a void invoice was never owed: neither says what was billed."""

_INVOICE_FIELDS = (
    "id",
    "created",
    "status",
    "subscription",
    "parent",
    "lines",
    "discount",
    "discounts",
    "total_discount_amounts",
)
"""What `reconstruct` reads of an invoice."""

CURRENT_SOURCE = "current"
"""Source of the version that is the subscription as read now."""

NEXT_INSTANT = timedelta(seconds=1)
"""How far after the last invoice version the current state goes when its own date is not later."""


@dataclass(frozen=True)
class HistoricalVersion:
    """A subscription as it stood from `observed_at` on, and where that came from."""

    subscription: dict[str, Any]
    """A full subscription payload, shaped like the current subscription it was built from."""
    observed_at: datetime
    """UTC, aware: the billing period's start (invoice versions) or the read / end (current)."""
    source: str
    """`invoice:<in_…>` for a version read from an invoice, `current` for the subscription as read now."""


_Rates = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A line's item `price` (and legacy `plan`) objects."""


@dataclass(frozen=True)
class _Billed:
    """The non-proration subscription lines one invoice has for one period start."""

    period_start: datetime
    invoice: Mapping[str, Any]
    lines: tuple[Mapping[str, Any], ...]


# --- Reading the payloads ------------------------------------------------------------------


def _id(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        found = value.get("id")
        return found if isinstance(found, str) and found else None
    return None


def _instant(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


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


def _line_details(line: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A current-API line's `subscription_item_details`, or None for any other line (or a 2020 line)."""
    parent = line.get("parent")
    if not isinstance(parent, Mapping):
        return None
    if parent.get("type") != "subscription_item_details":
        return {}  # an invoice item, a one-off: never a subscription period
    return _mapping(parent.get("subscription_item_details"))


def _line_subscription(line: Mapping[str, Any]) -> str | None:
    details = _line_details(line)
    if details is not None:
        return _id(details.get("subscription"))
    return _id(line.get("subscription"))


def _is_period_line(line: Mapping[str, Any]) -> bool:
    """A subscription line billing a whole period: not a proration, an invoice item or a one-off."""
    details = _line_details(line)
    if details is not None:
        return bool(details) and not details.get("proration")
    return line.get("type") == "subscription" and not line.get("proration")


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


def _billed_periods(subscription_id: str, invoice: Mapping[str, Any], rates: _Rates) -> list[_Billed]:
    """The invoice's period lines of this subscription, grouped by `period.start`.

    Metered usage is billed in arrears: its line's period is the one before the
    licensed lines'. It rides with the licensed lines of its invoice, so it never
    makes a period of its own (which would replace the real one, billed on the
    previous invoice).
    """
    if invoice.get("status") in IGNORED_INVOICE_STATUSES:
        return []
    own_invoice = invoice_subscription(invoice) == subscription_id
    period_lines = []
    for line in _lines(invoice):
        named = _line_subscription(line)
        if (named == subscription_id if named is not None else own_invoice) and _is_period_line(line):
            period_lines.append(line)
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


def _is_metered(rates: Mapping[str, Any]) -> bool:
    rate = _mapping(rates.get("price") or rates.get("plan"))
    recurring = rate if "interval" in rate else _mapping(rate.get("recurring"))
    return recurring.get("usage_type") == "metered"


def _latest_billing(subscription_id: str, invoices: Sequence[Mapping[str, Any]], rates: _Rates) -> list[_Billed]:
    """One billing per period start, sorted: a re-issued invoice (created later) replaces the earlier one.

    Ties on `created` go to the greater invoice id, so the input order never matters.
    """
    chosen: dict[datetime, _Billed] = {}
    for invoice in invoices:
        for billed in _billed_periods(subscription_id, invoice, rates):
            held = chosen.get(billed.period_start)
            if held is None or _issue_order(billed.invoice) > _issue_order(held.invoice):
                chosen[billed.period_start] = billed
    return [chosen[start] for start in sorted(chosen)]


def _issue_order(invoice: Mapping[str, Any]) -> tuple[int, str]:
    return int(invoice.get("created") or 0), _id(invoice) or ""


# --- Building a version --------------------------------------------------------------------


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


def _items_of(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = _mapping(subscription.get("items"))
    return [item for item in items.get("data") or [] if isinstance(item, Mapping)]


def _current_prices(subscription: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The price objects the current subscription carries, by id: a fallback for the lookup."""
    found: dict[str, Mapping[str, Any]] = {}
    for item in _items_of(subscription):
        for rate in (item.get("price"), item.get("plan")):
            rate_id = _id(rate)
            if isinstance(rate, Mapping) and rate_id is not None:
                found.setdefault(rate_id, rate)
    return found


def _rate_reader(prices: PriceLookup, current: Mapping[str, Any]) -> _Rates:
    """Reads a line's price: the lookup, then the current subscription's; each id looked up once."""
    current_prices = _current_prices(current)
    seen: dict[str, Mapping[str, Any] | None] = {}

    def stored(price_id: str) -> Mapping[str, Any] | None:
        if price_id not in seen:
            seen[price_id] = prices(price_id) or current_prices.get(price_id)
        return seen[price_id]

    return lambda line: _line_rates(line, stored)


def _line_rates(line: Mapping[str, Any], stored: PriceLookup) -> dict[str, Any]:
    """The item's `price` (and legacy `plan`) for a line.

    2020 lines carry whole objects. Current lines name the price by id under
    `pricing.price_details`; it comes from the lookup, else from the current
    subscription, else stays `{"id": …}` for the engine to resolve or report.
    """
    if _line_details(line) is None:
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


def _subscription_item_id(line: Mapping[str, Any]) -> str | None:
    details = _line_details(line)
    if details:
        return _id(details.get("subscription_item"))
    return _id(line.get("subscription_item"))


def _item(
    subscription_id: str,
    line: Mapping[str, Any],
    discounts: list[Any],
    rates: _Rates,
) -> dict[str, Any]:
    period = _mapping(line.get("period"))
    rate = rates(line)
    return {
        "id": _subscription_item_id(line) or _id(line),
        "object": "subscription_item",
        "subscription": subscription_id,
        **rate,
        # A metered item has no quantity in Stripe; the line's is the period's usage.
        "quantity": None if _is_metered(rate) else line.get("quantity"),
        "discounts": discounts,
        "current_period_start": period.get("start"),
        "current_period_end": period.get("end"),
    }


def _version_payload(
    current: Mapping[str, Any],
    billed: _Billed,
    rates: _Rates,
) -> dict[str, Any]:
    """The current subscription, with the items, discounts and status this billing says.

    The payload shares its objects with `current`, the invoice and the price
    lookup: most are dropped unchanged, so the caller copies the ones it keeps.
    """
    invoice = billed.invoice
    known = _known_discounts(invoice, *billed.lines, current, *_items_of(current))
    on_invoice = _discount_ids(invoice)

    def expanded(discount_id: str) -> Any:
        return known.get(discount_id, discount_id)

    subscription_id = str(current["id"])
    items = [
        _item(
            subscription_id,
            line,
            [expanded(d) for d in _discount_ids(line) if d not in on_invoice],
            rates,
        )
        for line in billed.lines
    ]
    version = dict(current)
    version_items = dict(_mapping(version.get("items")))
    version_items.update(object="list", data=items, has_more=False)
    if "total_count" in version_items:
        version_items["total_count"] = len(items)
    version.update(
        status=_billed_status(current, billed),
        items=version_items,
        discounts=[expanded(d) for d in on_invoice],
        canceled_at=None,
        ended_at=None,
        cancel_at=None,
        cancel_at_period_end=False,
        pause_collection=None,
        pending_update=None,
        latest_invoice=_id(invoice),
    )
    if "discount" in version:
        version["discount"] = None  # everything is in `discounts`; ledger.mrr reads both
    if "current_period_start" in version:  # 2020 API: the period sits on the subscription
        period = _mapping(billed.lines[0].get("period"))
        version.update(current_period_start=period.get("start"), current_period_end=period.get("end"))
    if "plan" in version:  # 2020 API: a single-item subscription repeats its plan on top
        single = items[0] if len(items) == 1 else None
        version["plan"] = None if single is None else single.get("plan") or single.get("price")
        version["quantity"] = None if single is None else single.get("quantity")
    return version


def _billed_status(current: Mapping[str, Any], billed: _Billed) -> str:
    """`trialing` for a period that starts inside the trial, else `active` (past_due is never inferred)."""
    trial_end = current.get("trial_end")
    if trial_end is not None and billed.period_start < _instant(trial_end):
        return "trialing"
    return "active"


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


def _billed_signature(current: Mapping[str, Any], billed: _Billed, rates: _Rates) -> tuple[Any, ...]:
    """`_signature` of the version `_version_payload` builds for this billing, without building it."""
    on_invoice = _discount_ids(billed.invoice)
    items = []
    for line in billed.lines:
        rate = rates(line)
        quantity = None if _is_metered(rate) else line.get("quantity")
        items.append(
            (
                _id(rate.get("price")) or _id(rate.get("plan")) or "",
                int(quantity) if quantity is not None else 1,
                tuple(sorted(d for d in _discount_ids(line) if d not in on_invoice)),
            )
        )
    return (_billed_status(current, billed), False, False, tuple(sorted(items)), tuple(sorted(on_invoice)))


def _current_observed_at(subscription: Mapping[str, Any], read_at: datetime) -> datetime:
    """`read_at`, or for a canceled subscription its end (`ended_at`, else `canceled_at`) when earlier."""
    if subscription.get("status") == "canceled":
        ended = subscription.get("ended_at") or subscription.get("canceled_at")
        if ended is not None:
            return min(read_at, _instant(ended))
    return read_at


# --- The history ---------------------------------------------------------------------------


def reconstruct(
    subscription: Mapping[str, Any],
    invoices: Sequence[Mapping[str, Any]],
    *,
    prices: PriceLookup,
    read_at: datetime,
) -> list[HistoricalVersion]:
    """The subscription's versions over time, oldest first, strictly increasing in `observed_at`.

    One version per billing period start seen on the invoices of this
    subscription (not draft or void; prorations, invoice items and other
    subscriptions' lines ignored; a re-issued invoice replaces the earlier one),
    consecutive versions the MRR rules cannot tell apart merged into the first,
    then the current subscription unless it adds nothing. The input order of
    `invoices` does not matter. Raises `ledger.mrr.UnresolvedStripeObject` for
    an invoice whose lines are only partly listed.
    """
    read_at = _aware(read_at, "read_at")
    subscription_id = subscription.get("id")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise ValueError("subscription has no id")
    rates = _rate_reader(prices, subscription)
    versions: list[HistoricalVersion] = []
    last: tuple[Any, ...] | None = None
    for billed in _latest_billing(subscription_id, invoices, rates):
        # Most renewals bill what the previous one did: compared before a payload is built.
        signature = _billed_signature(subscription, billed, rates)
        if signature == last:
            continue
        last = signature
        payload = _version_payload(subscription, billed, rates)
        source = f"invoice:{_id(billed.invoice)}"
        versions.append(HistoricalVersion(jsoncodec.copy(payload), billed.period_start, source))
    if versions and last == _signature(subscription):
        return versions
    observed_at = _current_observed_at(subscription, read_at)
    if versions and observed_at <= versions[-1].observed_at:
        # Stripe never bills a period after the subscription ended or after "now"; if an
        # invoice says so anyway, the current state still comes last (its churn keeps its date).
        observed_at = versions[-1].observed_at + NEXT_INSTANT
    versions.append(HistoricalVersion(jsoncodec.copy(dict(subscription)), observed_at, CURRENT_SOURCE))
    return versions
