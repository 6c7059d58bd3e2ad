"""Invoices, subscriptions and discounts in both Stripe API shapes, for the history tests.

Built from the real fixtures: the current API's `invoice`, `line_item`,
`discount` and `coupon` examples (fixtures3.json), and the 2020 API's
`invoice.paid` and `customer.subscription.updated` events. Each shape is a
class with the same methods, so one test runs against both:

- `CURRENT`: invoices name their subscription under `parent.subscription_details`,
  lines are `parent.type = subscription_item_details` and name their price by id
  under `pricing.price_details` (the test passes a price lookup).
- `API_2020`: invoices carry a top-level `subscription`, lines are
  `type = subscription` (prorations `type = invoiceitem`, `proration = true`)
  with whole `price` and `plan` objects; a subscription-level discount is the
  invoice's singular `discount`.

`backfill_scenario` is the customer history the backfill tests replay.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tests.ledger.subscription_payloads import item, price, subscription, ts, utc
from tests.stripe_payloads import event_2020, resource

DiscountAmount = tuple[int, str]
"""(amount taken off the line, discount id)."""


def coupon(percent_off: int, *, coupon_id: str = "OFF20", duration: str = "forever") -> dict[str, Any]:
    result = resource("coupon")
    result.update(
        id=coupon_id,
        name=f"{percent_off}% off",
        percent_off=percent_off,
        amount_off=None,
        currency=None,
        duration=duration,
        duration_in_months=None,
    )
    return result


def _month_after(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


class CurrentShape:
    """Payloads of the current API (fixtures3.json)."""

    name = "current"

    def price(
        self,
        unit_amount: int,
        price_id: str,
        product: str = "prod_plan",
        *,
        usage_type: str = "licensed",
        interval: str = "month",
    ) -> dict[str, Any]:
        result = price(unit_amount, interval, price_id=price_id, product=product)
        result["recurring"]["usage_type"] = usage_type
        return result

    def discount(
        self,
        percent_off: int,
        *,
        discount_id: str,
        start: datetime,
        subscription_id: str = "sub_1",
        coupon_id: str = "OFF20",
        coupon_by_id: bool = False,
    ) -> dict[str, Any]:
        """A discount; `coupon_by_id`: its coupon named only by id, as from 2025-09-30.clover on."""
        result = resource("discount")
        whole = coupon(percent_off, coupon_id=coupon_id)
        result.update(
            id=discount_id,
            customer="cus_1",
            subscription=subscription_id,
            start=ts(start),
            end=None,
            source={"type": "coupon", "coupon": coupon_id if coupon_by_id else whole},
        )
        return result

    def subscription(
        self,
        *rows: tuple[dict[str, Any], int, str],
        start: datetime,
        status: str = "active",
        sub_id: str = "sub_1",
        discounts: Sequence[dict[str, Any]] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        """A subscription with items (price, quantity, item id); datetimes in `fields` become timestamps."""
        items = [item(rate, quantity, item_id=item_id) for rate, quantity, item_id in rows]
        return subscription(*items, start=start, status=status, sub_id=sub_id, discounts=list(discounts), **fields)

    def _line(
        self,
        kind: str,
        rate: Mapping[str, Any],
        quantity: int,
        *,
        start: datetime,
        end: datetime,
        amount: int,
        item_id: str,
        subscription_id: str,
        proration: bool,
        discounts: Sequence[Any] = (),
        discount_amounts: Sequence[DiscountAmount] = (),
        invoice_item: str | None = None,
    ) -> dict[str, Any]:
        line = resource("line_item")
        line.update(
            id=f"il_{kind}_{item_id}_{ts(start)}_{rate['id']}",
            amount=amount,
            currency="usd",
            description=f"{quantity} × {rate['id']}",
            discount_amounts=[{"amount": taken, "discount": discount_id} for taken, discount_id in discount_amounts],
            discounts=list(discounts),
            period={"start": ts(start), "end": ts(end)},
            quantity=quantity,
            subscription=None,
        )
        details = {
            "invoice_item": f"ii_{item_id}_{ts(start)}" if kind == "item" else invoice_item,
            "proration": proration,
            "proration_details": {"credited_items": None},
            "subscription": subscription_id,
        }
        if kind == "item":
            line["parent"] = {
                "type": "invoice_item_details",
                "invoice_item_details": details,
                "subscription_item_details": None,
            }
        else:
            line["parent"] = {
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {**details, "subscription_item": item_id},
            }
        line["pricing"] = {
            "type": "price_details",
            "price_details": {"price": rate["id"], "product": rate.get("product")},
            "unit_amount_decimal": str(rate.get("unit_amount")),
        }
        return line

    def period_line(
        self,
        rate: Mapping[str, Any],
        quantity: int = 1,
        *,
        start: datetime,
        end: datetime | None = None,
        amount: int | None = None,
        item_id: str = "si_1",
        subscription_id: str = "sub_1",
        discounts: Sequence[Any] = (),
        discount_amounts: Sequence[DiscountAmount] = (),
    ) -> dict[str, Any]:
        """A subscription line billing one whole period (not a proration)."""
        return self._line(
            "period",
            rate,
            quantity,
            start=start,
            end=end or _month_after(start),
            amount=int(rate["unit_amount"]) * quantity if amount is None else amount,
            item_id=item_id,
            subscription_id=subscription_id,
            proration=False,
            discounts=discounts,
            discount_amounts=discount_amounts,
        )

    def proration_line(
        self,
        rate: Mapping[str, Any],
        quantity: int,
        *,
        start: datetime,
        end: datetime,
        amount: int,
        item_id: str = "si_1",
        subscription_id: str = "sub_1",
        invoice_item: str | None = None,
    ) -> dict[str, Any]:
        """A proration line: a credit (amount < 0) for what was removed, a debit for what was added, from
        `start`. `invoice_item`: the pending invoice item it bills (a proration billed on a later invoice)."""
        return self._line(
            "proration",
            rate,
            quantity,
            start=start,
            end=end,
            amount=amount,
            item_id=item_id,
            subscription_id=subscription_id,
            proration=True,
            invoice_item=invoice_item,
        )

    def pending_item(
        self,
        invoice_item_id: str,
        rate: Mapping[str, Any],
        quantity: int,
        *,
        start: datetime,
        end: datetime,
        amount: int,
        item_id: str = "si_1",
        subscription_id: str = "sub_1",
    ) -> dict[str, Any]:
        """A proration invoice item not invoiced yet (`proration_behavior=create_prorations`)."""
        return {
            "id": invoice_item_id,
            "object": "invoiceitem",
            "amount": amount,
            "currency": "usd",
            "customer": "cus_1",
            "date": ts(start),
            "description": f"{quantity} × {rate['id']}",
            "discountable": True,
            "discounts": [],
            "invoice": None,
            "livemode": False,
            "metadata": {},
            "parent": {
                "type": "subscription_details",
                "subscription_details": {"subscription": subscription_id, "subscription_item": item_id},
            },
            "period": {"start": ts(start), "end": ts(end)},
            "pricing": {
                "type": "price_details",
                "price_details": {"price": rate["id"], "product": rate.get("product")},
                "unit_amount_decimal": str(rate.get("unit_amount")),
            },
            "proration": True,
            "quantity": quantity,
        }

    def invoice_item_line(
        self, rate: Mapping[str, Any], *, start: datetime, amount: int, subscription_id: str = "sub_1"
    ) -> dict[str, Any]:
        """A one-off invoice item (a setup fee) on a subscription's invoice."""
        return self._line(
            "item",
            rate,
            1,
            start=start,
            end=start,
            amount=amount,
            item_id="si_none",
            subscription_id=subscription_id,
            proration=False,
        )

    def invoice(
        self,
        invoice_id: str,
        *lines: dict[str, Any],
        created: datetime,
        subscription_id: str | None = "sub_1",
        status: str = "paid",
        discounts: Sequence[dict[str, Any]] = (),
        expand_discounts: bool = True,
        billing_reason: str = "subscription_cycle",
    ) -> dict[str, Any]:
        """An invoice; `discounts` apply to the whole invoice, expanded unless `expand_discounts` is false."""
        result = resource("invoice")
        for line in lines:
            line["invoice"] = invoice_id
        result.update(
            id=invoice_id,
            created=ts(created),
            customer="cus_1",
            status=status,
            billing_reason=billing_reason,
            discounts=[entry if expand_discounts else entry["id"] for entry in discounts],
            subscription=None,
        )
        result["lines"].update(data=list(lines), has_more=False, url=f"/v1/invoices/{invoice_id}/lines")
        result["parent"] = (
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": None, "subscription": subscription_id},
            }
            if subscription_id is not None
            else None
        )
        return result


class Shape2020(CurrentShape):
    """Payloads of the 2020-03-02 API (events-api-2020/)."""

    name = "2020"

    def price(
        self,
        unit_amount: int,
        price_id: str,
        product: str = "prod_plan",
        *,
        usage_type: str = "licensed",
        interval: str = "month",
    ) -> dict[str, Any]:
        template: dict[str, Any] = _line_2020()["price"]
        template.update(
            id=price_id, product=product, unit_amount=unit_amount, unit_amount_decimal=str(unit_amount), active=True
        )
        template["recurring"].update(usage_type=usage_type, interval=interval)
        return template

    @staticmethod
    def plan(rate: Mapping[str, Any]) -> dict[str, Any]:
        """The legacy plan Stripe repeats beside a price."""
        template: dict[str, Any] = _line_2020()["plan"]
        template.update(
            id=rate["id"],
            product=rate["product"],
            amount=rate["unit_amount"],
            amount_decimal=str(rate["unit_amount"]),
            active=True,
            usage_type=rate["recurring"]["usage_type"],
            interval=rate["recurring"]["interval"],
        )
        return template

    def discount(
        self,
        percent_off: int,
        *,
        discount_id: str,
        start: datetime,
        subscription_id: str = "sub_1",
        coupon_id: str = "OFF20",
        coupon_by_id: bool = False,
    ) -> dict[str, Any]:
        """A discount with its whole coupon inside (a 2020 discount never names it by id)."""
        result = super().discount(
            percent_off, discount_id=discount_id, start=start, subscription_id=subscription_id, coupon_id=coupon_id
        )
        result["coupon"] = result.pop("source")["coupon"]
        return result

    def subscription(
        self,
        *rows: tuple[dict[str, Any], int, str],
        start: datetime,
        status: str = "active",
        sub_id: str = "sub_1",
        discounts: Sequence[dict[str, Any]] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        result: dict[str, Any] = copy.deepcopy(event_2020("subscription_updated")["data"]["object"])
        items = [
            {
                "id": item_id,
                "object": "subscription_item",
                "created": ts(start),
                "metadata": {},
                "price": copy.deepcopy(rate),
                "plan": self.plan(rate),
                "quantity": quantity,
                "subscription": sub_id,
                "tax_rates": [],
            }
            for rate, quantity, item_id in rows
        ]
        result["items"].update(data=items, total_count=len(items), url=f"/v1/subscription_items?subscription={sub_id}")
        single = items[0] if len(items) == 1 else None
        result.update(
            id=sub_id,
            customer="cus_1",
            status=status,
            start_date=ts(start),
            created=ts(start),
            billing_cycle_anchor=ts(start),
            current_period_start=ts(start),
            current_period_end=ts(_month_after(start)),
            plan=single["plan"] if single else None,
            quantity=single["quantity"] if single else None,
            discount=discounts[0] if discounts else None,
            cancel_at=None,
            cancel_at_period_end=False,
            canceled_at=None,
            ended_at=None,
            pause_collection=None,
            trial_start=None,
            trial_end=None,
            metadata={},
        )
        result.update({key: ts(value) if isinstance(value, datetime) else value for key, value in fields.items()})
        return result

    def _line(
        self,
        kind: str,
        rate: Mapping[str, Any],
        quantity: int,
        *,
        start: datetime,
        end: datetime,
        amount: int,
        item_id: str,
        subscription_id: str,
        proration: bool,
        discounts: Sequence[Any] = (),
        discount_amounts: Sequence[DiscountAmount] = (),
        invoice_item: str | None = None,
    ) -> dict[str, Any]:
        line = _line_2020()
        line.update(
            id=f"il_{kind}_{item_id}_{ts(start)}_{rate['id']}",
            amount=amount,
            description=f"{quantity} × {rate['id']}",
            discount_amounts=[{"amount": taken, "discount": discount_id} for taken, discount_id in discount_amounts],
            discounts=list(discounts),
            metadata={},
            period={"start": ts(start), "end": ts(end)},
            price=copy.deepcopy(rate),
            plan=self.plan(rate),
            proration=proration,
            quantity=quantity,
            subscription=subscription_id,
            subscription_item=None if kind == "item" else item_id,
            # Before 2022, prorations and one-off items were both invoice items on the invoice.
            type="subscription" if kind == "period" else "invoiceitem",
        )
        if kind != "period":
            line["invoice_item"] = invoice_item or f"ii_{item_id}_{ts(start)}"
        return line

    def pending_item(
        self,
        invoice_item_id: str,
        rate: Mapping[str, Any],
        quantity: int,
        *,
        start: datetime,
        end: datetime,
        amount: int,
        item_id: str = "si_1",
        subscription_id: str = "sub_1",
    ) -> dict[str, Any]:
        result = super().pending_item(
            invoice_item_id,
            rate,
            quantity,
            start=start,
            end=end,
            amount=amount,
            item_id=item_id,
            subscription_id=subscription_id,
        )
        del result["parent"], result["pricing"]
        result.update(
            price=copy.deepcopy(rate), plan=self.plan(rate), subscription=subscription_id, subscription_item=item_id
        )
        return result

    def invoice(
        self,
        invoice_id: str,
        *lines: dict[str, Any],
        created: datetime,
        subscription_id: str | None = "sub_1",
        status: str = "paid",
        discounts: Sequence[dict[str, Any]] = (),
        expand_discounts: bool = True,
        billing_reason: str = "subscription_cycle",
    ) -> dict[str, Any]:
        """An invoice; a whole-invoice discount is the singular `discount` (expanded) and listed by id."""
        result: dict[str, Any] = copy.deepcopy(event_2020("invoice_paid")["data"]["object"])
        result.update(
            id=invoice_id,
            created=ts(created),
            billing_reason=billing_reason,
            customer="cus_1",
            status=status,
            paid=status == "paid",
            subscription=subscription_id,
            discount=(discounts[0] if expand_discounts else discounts[0]["id"]) if discounts else None,
            discounts=[entry["id"] for entry in discounts],
            metadata={},
            custom_fields=None,
        )
        result["lines"].update(
            data=list(lines), has_more=False, total_count=len(lines), url=f"/v1/invoices/{invoice_id}/lines"
        )
        return result


def _line_2020() -> dict[str, Any]:
    return copy.deepcopy(event_2020("invoice_paid")["data"]["object"]["lines"]["data"][0])


CURRENT = CurrentShape()
API_2020 = Shape2020()
SHAPES = [CURRENT, API_2020]


def price_lookup(*rates: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Stored prices by id (`.get` is a `ledger.history.PriceLookup`)."""
    return {rate["id"]: rate for rate in rates}


# --- The backfill scenario -----------------------------------------------------------------


@dataclass(frozen=True)
class BackfillScenario:
    """One customer's two subscriptions as Stripe holds them now, and every invoice of the customer."""

    subscriptions: tuple[dict[str, Any], ...]
    invoices: tuple[dict[str, Any], ...]
    prices: Mapping[str, Mapping[str, Any]]
    read_at: datetime


SCENARIO_CANCELED_AT = utc(8, 15, 10)
"""When the first subscription ended."""


def backfill_scenario(shape: CurrentShape) -> BackfillScenario:
    """$50 × 1 from January; $100 plan from 20 February (the upgrade's proration pair, invoiced
    at once, dates it); quantity 2 from May; a 20%-forever coupon applied on 20 May (first
    invoiced in June; the discount's `start` dates it); canceled 15 August; a new subscription
    at $50 from October.

    Movements: new +5000 (Jan), expansion +5000 (20 Feb), expansion +10000 (May),
    contraction −4000 (20 May), churn −16000 (15 Aug), reactivation +5000 (Oct).
    """
    basic, pro = shape.price(5000, "price_basic", "prod_basic"), shape.price(10000, "price_pro", "prod_pro")
    coupon_20 = shape.discount(20, discount_id="di_20", start=utc(5, 20))
    line, invoice = shape.period_line, shape.invoice

    def monthly(month: int, rate: dict[str, Any], quantity: int, *, discounted: bool = False) -> dict[str, Any]:
        start = utc(month, 1, 9)
        gross = int(rate["unit_amount"]) * quantity
        taken = [(gross // 5, "di_20")] if discounted else []
        billed = line(rate, quantity, start=start, amount=gross - sum(t for t, _ in taken), discount_amounts=taken)
        return invoice(f"in_2024_{month:02}", billed, created=start, discounts=[coupon_20] if discounted else [])

    upgrade = invoice(
        "in_2024_02_upgrade",
        shape.proration_line(basic, 1, start=utc(2, 20, 14), end=utc(3, 1, 9), amount=-1552),
        shape.proration_line(pro, 1, start=utc(2, 20, 14), end=utc(3, 1, 9), amount=3103),
        created=utc(2, 20, 14),
        billing_reason="subscription_update",
    )
    first = [
        monthly(1, basic, 1),
        monthly(2, basic, 1),
        upgrade,
        monthly(3, pro, 1),
        monthly(4, pro, 1),
        monthly(5, pro, 2),
        monthly(6, pro, 2, discounted=True),
        monthly(7, pro, 2, discounted=True),
        monthly(8, pro, 2, discounted=True),
    ]
    second = [
        invoice(
            f"in_2024_{month:02}_b",
            line(basic, start=utc(month, 1, 9), item_id="si_2", subscription_id="sub_2"),
            created=utc(month, 1, 9),
            subscription_id="sub_2",
        )
        for month in (10, 11, 12)
    ]
    canceled = shape.subscription(
        (pro, 2, "si_1"),
        start=utc(1, 1, 9),
        status="canceled",
        discounts=[coupon_20],
        canceled_at=SCENARIO_CANCELED_AT,
        ended_at=SCENARIO_CANCELED_AT,
    )
    renewed = shape.subscription((basic, 1, "si_2"), start=utc(10, 1, 9), sub_id="sub_2")
    return BackfillScenario(
        subscriptions=(canceled, renewed),
        invoices=tuple(first + second),
        prices=price_lookup(basic, pro),
        read_at=utc(12, 10, 12),
    )
