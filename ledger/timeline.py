"""A subscription's MRR over time: mrr-rules.md §2 (what counts) and §5 (when it takes effect).

The input is every stored version ("snapshot") of a subscription: one per
webhook event, API read, backfill or reconciliation. The output is the list of
instants at which the subscription's MRR changed, with the snapshots that told
us. Nothing here depends on the order the snapshots arrived in: they are sorted
by what they say (time, rank, state, content), duplicates merged, and the
timeline is rebuilt from scratch each time.

Each snapshot, read on its own, implies a whole history (its *projection*): an
`active` subscription that started a year ago has been worth its current items
since its paid start; a `trialing` one has been worth nothing; a `canceled` one
was worth its last items from its paid start until it churned. The timeline is
the first snapshot's projection, overwritten by each later snapshot's
projection from that snapshot's effective time on (§5). Effective times never
go backwards: a later snapshot's change never takes effect before the previous
snapshot's (the *clamp*).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.mrr import subscription_mrr, value_breakpoints
from ledger.settings import RuleSettings

DISTANT_PAST = datetime.min.replace(tzinfo=UTC)
"""The effective time of a subscription's first snapshot: its projection covers all of the past."""

PAYING_STATUSES = frozenset({"active", "past_due"})
"""§2: statuses whose items count, unless paused or (past_due) past its grace."""

PRE_PAID_STATUSES = frozenset({"trialing", "incomplete"})
"""Statuses a subscription leaves by starting to pay: the change dates from its paid start (§5)."""

STATUS_ORDER: Mapping[str, int] = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 5,
    "canceled": 6,
    "incomplete_expired": 6,
}
"""Tie-break between same-second, same-rank snapshots: the life cycle's usual order, terminal last."""


@dataclass(frozen=True)
class Snapshot:
    """One stored version of a Stripe subscription."""

    subscription_id: str
    customer_id: str
    observed_at: datetime
    """UTC, aware: the Stripe event's `created`, or when the API read was made."""
    rank: int
    """Order inside one second, lowest first: events as ledger.ordering settled them, then reconciliation."""
    source: str
    """What stored it: `evt_…`, `backfill:<run>`, `reconcile:<run>`…"""
    subscription: Mapping[str, Any]
    """The Stripe subscription as of `observed_at`, discounts expanded."""


@dataclass(frozen=True)
class Change:
    """From `at` on, the subscription's MRR is (`gross`, `net`)."""

    at: datetime
    subscription_id: str
    customer_id: str
    currency: str
    gross: int
    net: int
    sources: tuple[str, ...]
    """Sources of the snapshot(s) that caused the change, sorted."""
    scheduled_churn: bool
    """Live, counted and set to cancel (`cancel_at_period_end` / `cancel_at`): §8's scheduled churn."""


@dataclass(frozen=True)
class _Worth:
    currency: str
    gross: int
    net: int
    scheduled_churn: bool

    def same_as(self, other: _Worth | None) -> bool:
        if other is None:
            return self.is_nothing
        if self.is_nothing and other.is_nothing:
            return True  # zero is zero in any currency
        return self == other

    @property
    def is_nothing(self) -> bool:
        return self.gross == 0 and self.net == 0 and not self.scheduled_churn


@dataclass(frozen=True)
class _Version:
    """Identical snapshots merged into one, with all their sources."""

    snapshot: Snapshot
    sources: tuple[str, ...]


# --- Reading the payload -------------------------------------------------------------------


def _instant(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _aware(value, "timestamp")
    return datetime.fromtimestamp(int(value), tz=UTC)


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (got {value.isoformat()})")
    return value.astimezone(UTC)


def _status(subscription: Mapping[str, Any]) -> str:
    return str(subscription.get("status") or "")


def _paid_start(snapshot: Snapshot) -> datetime:
    """When the subscription starts paying: the end of its trial, else its start (§5)."""
    subscription = snapshot.subscription
    for field in ("trial_end", "start_date", "created"):
        instant = _instant(subscription.get(field))
        if instant is not None:
            return instant
    return snapshot.observed_at


def _has_schedule(subscription: Mapping[str, Any]) -> bool:
    return bool(subscription.get("cancel_at_period_end")) or subscription.get("cancel_at") is not None


def _is_paused(subscription: Mapping[str, Any]) -> bool:
    return _status(subscription) == "paused" or subscription.get("pause_collection") is not None


def _churn_at(snapshot: Snapshot, rules: RuleSettings) -> datetime | None:
    """When the subscription churned by cancellation (§5), or None if it has not.

    A canceled one churns at `ended_at` (`canceled_at` with CHURN_RECOGNITION=request).
    With `request`, a live one set to cancel has churned at its request, `canceled_at`.
    """
    subscription = snapshot.subscription
    ended_at = _instant(subscription.get("ended_at"))
    canceled_at = _instant(subscription.get("canceled_at"))
    status = _status(subscription)
    if status == "canceled":
        if rules.churn_recognition == "request":
            return canceled_at or ended_at or snapshot.observed_at
        return ended_at or canceled_at or snapshot.observed_at
    if status in PAYING_STATUSES and rules.churn_recognition == "request" and _has_schedule(subscription):
        return canceled_at or snapshot.observed_at
    return None


def _period_start(subscription: Mapping[str, Any]) -> datetime | None:
    """`current_period_start`, on the subscription (older API) or its items (2025 API)."""
    start = _instant(subscription.get("current_period_start"))
    if start is not None:
        return start
    items = subscription.get("items")
    data = items.get("data") if isinstance(items, Mapping) else None
    starts = [_instant(item.get("current_period_start")) for item in data or [] if isinstance(item, Mapping)]
    known = [instant for instant in starts if instant is not None]
    return max(known) if known else None


# --- What one snapshot implies ------------------------------------------------------------


class _Projection:
    """The subscription's worth at any instant, as one snapshot alone tells it (§2)."""

    def __init__(self, snapshot: Snapshot, rules: RuleSettings, *, past_due_since: datetime | None) -> None:
        self.snapshot = snapshot
        self.rules = rules
        subscription = snapshot.subscription
        status = _status(subscription)
        churn_at = _churn_at(snapshot, rules)
        self.counted_from: datetime | None = None
        self.counted_until: datetime | None = None
        if status == "canceled" or (status in PAYING_STATUSES and not _is_paused(subscription)):
            self.counted_from = _paid_start(snapshot)
            self.counted_until = churn_at
        if status == "past_due" and rules.past_due_grace_days is not None and past_due_since is not None:
            delinquent_at = past_due_since + timedelta(days=rules.past_due_grace_days)
            self.counted_until = min(delinquent_at, self.counted_until or delinquent_at)
        self.scheduled_since: datetime | None = None
        if status in PAYING_STATUSES and rules.churn_recognition == "ended" and _has_schedule(subscription):
            self.scheduled_since = _instant(subscription.get("canceled_at")) or snapshot.observed_at

    def counted_at(self, at: datetime) -> bool:
        if self.counted_from is None or at < self.counted_from:
            return False
        return self.counted_until is None or at < self.counted_until

    def worth_at(self, at: datetime) -> _Worth:
        subscription = self.snapshot.subscription
        if not self.counted_at(at):
            currency = subscription.get("currency")
            if currency:
                return _Worth(str(currency).lower(), 0, 0, scheduled_churn=False)
            return _Worth(subscription_mrr(subscription, at, self.rules).currency, 0, 0, False)
        mrr = subscription_mrr(subscription, at, self.rules)
        scheduled = self.scheduled_since is not None and at >= self.scheduled_since
        return _Worth(mrr.currency, mrr.gross, mrr.net, scheduled_churn=scheduled)

    def instants(self) -> list[datetime]:
        """Every instant at which this projection's worth may change, sorted."""
        candidates = {self.counted_from, self.counted_until, self.scheduled_since}
        if self.counted_from is not None:
            candidates.update(value_breakpoints(self.snapshot.subscription, self.rules))
        return sorted(instant for instant in candidates if instant is not None)


def _effective_at(previous: Snapshot, snapshot: Snapshot, rules: RuleSettings) -> datetime:
    """§5: when what `snapshot` says (after `previous`) takes effect, before the clamp.

    The earliest of the moments the snapshot can date a change to: its own
    observation (plan, quantity, item, discount, unpaid, paused, resumed), the
    paid start when the previous version had not started paying (trial converts,
    starts paid), and its churn (cancellation).
    """
    candidates = [snapshot.observed_at]
    if _status(previous.subscription) in PRE_PAID_STATUSES:
        candidates.append(_paid_start(snapshot))
    churn_at = _churn_at(snapshot, rules)
    if churn_at is not None:
        candidates.append(churn_at)
    return min(candidates)


def _first_past_due_since(snapshot: Snapshot) -> datetime:
    """A subscription first seen past_due: its current period's failed renewal, if earlier."""
    period_start = _period_start(snapshot.subscription)
    since = snapshot.observed_at if period_start is None else min(snapshot.observed_at, period_start)
    return max(since, _paid_start(snapshot))


# --- Ordering ------------------------------------------------------------------------------


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def _content_key(snapshot: Snapshot) -> str:
    document = {
        "subscription_id": snapshot.subscription_id,
        "customer_id": snapshot.customer_id,
        "subscription": _canonical(snapshot.subscription),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _versions(snapshots: Iterable[Snapshot]) -> list[_Version]:
    """Snapshots in their §5 order, identical ones merged; never in arrival order.

    Inside one second the rank decides (set by the worker from the objects' own
    evidence, see ledger.ordering; reconciliation last), then
    the life-cycle order of the status, then the content digest, which is
    arbitrary but the same on every run.
    """
    placed: dict[tuple[datetime, int, int], list[Snapshot]] = {}
    for snapshot in snapshots:
        key = (
            _aware(snapshot.observed_at, "observed_at"),
            snapshot.rank,
            STATUS_ORDER.get(_status(snapshot.subscription), len(STATUS_ORDER)),
        )
        placed.setdefault(key, []).append(snapshot)
    versions: list[_Version] = []
    for key in sorted(placed):
        alike = placed[key]
        if len(alike) == 1:  # the digest is costly, and only orders snapshots that tie on the rest
            versions.append(_Version(alike[0], (alike[0].source,)))
            continue
        merged: dict[str, tuple[Snapshot, set[str]]] = {}
        for snapshot in alike:
            # Equal digests mean equal content: which copy is kept does not matter, all sources are.
            merged.setdefault(_content_key(snapshot), (snapshot, set()))[1].add(snapshot.source)
        versions.extend(_Version(snapshot, tuple(sorted(sources))) for _, (snapshot, sources) in sorted(merged.items()))
    return versions


# --- The timeline --------------------------------------------------------------------------


_Point = tuple[datetime, _Worth, tuple[str, ...]]
"""(instant, worth from then on, sources)."""


def _timeline(versions: Sequence[_Version], rules: RuleSettings) -> list[_Point]:
    """The points of one subscription's worth, sorted by instant."""
    points: list[_Point] = []
    previous: Snapshot | None = None
    effective_at = DISTANT_PAST
    past_due_since: datetime | None = None
    for version in versions:
        snapshot = version.snapshot
        if previous is not None:
            # The clamp: a later snapshot's change never precedes the previous one's.
            effective_at = max(_effective_at(previous, snapshot, rules), effective_at)
        if _status(snapshot.subscription) != "past_due":
            past_due_since = None
        elif previous is None:
            past_due_since = _first_past_due_since(snapshot)
        elif _status(previous.subscription) != "past_due":
            past_due_since = effective_at
        projection = _Projection(snapshot, rules, past_due_since=past_due_since)
        points = [point for point in points if point[0] < effective_at]
        points.append((effective_at, projection.worth_at(effective_at), version.sources))
        points.extend(
            (instant, projection.worth_at(instant), version.sources)
            for instant in projection.instants()
            if instant > effective_at
        )
        previous = snapshot
    return points


def subscription_changes(snapshots: Sequence[Snapshot], rules: RuleSettings, *, until: datetime) -> list[Change]:
    """Every change of MRR of the snapshots' subscriptions up to `until`, sorted by time.

    Snapshots may come in any order, with duplicates, and for several
    subscriptions. Changes after `until` (a discount's end, a grace period's
    end, a trial end still to come) are left out: the caller asks again later.
    Raises `ledger.mrr.UnresolvedStripeObject` when a payload must be fetched
    or expanded before it can be valued.
    """
    until = _aware(until, "until")
    by_subscription: dict[str, list[Snapshot]] = {}
    for snapshot in snapshots:
        by_subscription.setdefault(snapshot.subscription_id, []).append(snapshot)
    changes: list[Change] = []
    for subscription_id, own in by_subscription.items():
        versions = _versions(own)
        customer_id = versions[-1].snapshot.customer_id
        worth: _Worth | None = None
        for at, new_worth, sources in _timeline(versions, rules):
            if at > until:
                break
            if new_worth.same_as(worth):
                continue
            worth = new_worth
            changes.append(
                Change(
                    at=at,
                    subscription_id=subscription_id,
                    customer_id=customer_id,
                    currency=new_worth.currency,
                    gross=new_worth.gross,
                    net=new_worth.net,
                    sources=sources,
                    scheduled_churn=new_worth.scheduled_churn,
                )
            )
    return sorted(changes, key=lambda change: (change.at, change.subscription_id))
