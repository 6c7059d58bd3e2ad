"""A small Stripe account behind `responses`: list endpoints as Stripe pages them.

Lists are ordered newest first (`created`, then id), honour `created[gte|gt|lt|lte]`,
`starting_after`, `limit`, `active` for prices and products (active ones
unless asked) and `status` for subscriptions (canceled ones only with
`status=all`). Invoices embed their first 10 lines, as Stripe does, and
`/v1/invoices/<id>/lines` pages through all of them; subscriptions embed their
first 20 items, and `/v1/subscription_items?subscription=<id>` pages through
all of them. `fail(...)` queues answers
(a 429, a 500, an exception) for requests matching a path and query; `hooks`
see each request before it is answered. Every
request is kept in `requests` as (path, query) for the test to inspect, its
`Stripe-Version` header in `versions`, and those that got a queued answer in
`faulted` too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import responses

BASE = "https://stripe.test"
EMBEDDED_LINES = 10
"""Lines Stripe embeds in an invoice; the rest come from its lines endpoint."""
EMBEDDED_ITEMS = 20
"""Items Stripe embeds in a subscription; the rest come from `/v1/subscription_items`."""

Query = dict[str, str]


@dataclass
class _Fault:
    path: str
    when: Callable[[Query], bool]
    status: int
    body: Mapping[str, Any] | None
    headers: Mapping[str, str]
    exception: BaseException | None
    times: int


class FakeStripe:
    def __init__(self, mock: responses.RequestsMock, base: str = BASE) -> None:
        self.base = base
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.requests: list[tuple[str, Query]] = []
        self.versions: list[str | None] = []
        """The `Stripe-Version` header of each request, in the order of `requests`."""
        self.faulted: list[tuple[str, Query]] = []
        self._faults: list[_Fault] = []
        self.hooks: list[Callable[[str, Query], None]] = []
        """Called with each request's path and query before it is answered (to hold or observe it)."""
        mock.add_callback(responses.GET, re.compile(re.escape(base) + r"/v1/.*"), callback=self._answer)

    def add(self, resource: str, *objects: dict[str, Any]) -> None:
        """Objects of `/v1/<resource>` (e.g. "customers", "invoices")."""
        for obj in objects:
            self.objects.setdefault(resource, {})[obj["id"]] = copy.deepcopy(obj)

    def fail(
        self,
        path: str,
        *,
        status: int = 500,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        exception: BaseException | None = None,
        when: Callable[[Query], bool] = lambda query: True,
        times: int = 1,
    ) -> None:
        """The next `times` requests on `path` whose query satisfies `when` get this answer instead."""
        default = {"error": {"type": "api_error", "message": "simulated"}}
        self._faults.append(_Fault(path, when, status, body or default, headers or {}, exception, times))

    def calls(self, path: str) -> list[Query]:
        return [query for called, query in self.requests if called == path]

    # --- answering --------------------------------------------------------------------------

    def _answer(self, request: Any) -> tuple[int, dict[str, str], str]:
        url = urlsplit(request.url)
        path, query = url.path, dict(parse_qsl(url.query))
        self.requests.append((path, query))
        self.versions.append(request.headers.get("Stripe-Version"))
        for hook in self.hooks:
            hook(path, query)
        for fault in self._faults:
            if fault.times > 0 and fault.path == path and fault.when(query):
                fault.times -= 1
                self.faulted.append((path, query))
                if fault.exception is not None:
                    raise fault.exception
                return fault.status, dict(fault.headers), json.dumps(fault.body)
        segments = path.strip("/").split("/")[1:]
        if segments == ["subscription_items"]:
            return self._items(query)
        if len(segments) == 1:
            return self._list(segments[0], query)
        if len(segments) == 3 and segments[0] == "invoices" and segments[2] == "lines":
            invoice = self.objects.get("invoices", {}).get(segments[1])
            if invoice is None:
                return self._missing(segments[1])
            return self._page(invoice["lines"]["data"], query, path)
        found = self.objects.get(segments[0], {}).get(segments[1]) if len(segments) == 2 else None
        if found is None:
            return self._missing(segments[-1])
        if segments[0] == "subscriptions":
            found = self._embedded_items(found)
        return 200, {}, json.dumps(found)

    @staticmethod
    def _missing(object_id: str) -> tuple[int, dict[str, str], str]:
        error = {"type": "invalid_request_error", "message": f"No such object: '{object_id}'"}
        return 404, {}, json.dumps({"error": error})

    def _list(self, resource: str, query: Query) -> tuple[int, dict[str, str], str]:
        # An invoice item's `created` is its `date`.
        objects = sorted(
            self.objects.get(resource, {}).values(), key=lambda o: (o.get("created", o.get("date", 0)), o["id"])
        )
        objects.reverse()
        bounds = {
            "created[gte]": lambda c, v: c >= v,
            "created[gt]": lambda c, v: c > v,
            "created[lt]": lambda c, v: c < v,
            "created[lte]": lambda c, v: c <= v,
        }
        for key, holds in bounds.items():
            if key in query:
                objects = [o for o in objects if holds(o.get("created", 0), int(query[key]))]
        if resource in ("prices", "products"):
            # Stripe lists only active ones unless asked.
            active = query.get("active", "true") == "true"
            objects = [o for o in objects if o.get("active", True) == active]
        if resource == "subscriptions" and query.get("status") != "all":
            wanted = query.get("status")
            objects = [o for o in objects if (o["status"] == wanted if wanted else o["status"] != "canceled")]
        if resource == "invoiceitems" and "pending" in query:
            objects = [o for o in objects if (o.get("invoice") is None) == (query["pending"] == "true")]
        if resource == "invoices":
            objects = [self._embedded_lines(invoice) for invoice in objects]
        if resource == "subscriptions":
            objects = [self._embedded_items(subscription) for subscription in objects]
        return self._page(objects, query, f"/v1/{resource}")

    @staticmethod
    def _embedded_lines(invoice: dict[str, Any]) -> dict[str, Any]:
        shown = copy.deepcopy(invoice)
        lines = invoice["lines"]["data"]
        shown["lines"] = {
            "object": "list",
            "data": copy.deepcopy(lines[:EMBEDDED_LINES]),
            "has_more": len(lines) > EMBEDDED_LINES,
            "url": f"/v1/invoices/{invoice['id']}/lines",
        }
        return shown

    @staticmethod
    def _embedded_items(subscription: dict[str, Any]) -> dict[str, Any]:
        items = subscription.get("items")
        if not isinstance(items, dict) or len(items.get("data") or []) <= EMBEDDED_ITEMS:
            return subscription
        shown = copy.deepcopy(subscription)
        shown["items"] = dict(items, data=copy.deepcopy(items["data"][:EMBEDDED_ITEMS]), has_more=True)
        return shown

    def _items(self, query: Query) -> tuple[int, dict[str, str], str]:
        if "subscription" not in query:
            error = {"type": "invalid_request_error", "message": "Missing required param: subscription."}
            return 400, {}, json.dumps({"error": error})
        subscription = self.objects.get("subscriptions", {}).get(query["subscription"])
        if subscription is None:
            return self._missing(query["subscription"])
        return self._page(list(subscription["items"]["data"]), query, "/v1/subscription_items")

    @staticmethod
    def _page(objects: list[dict[str, Any]], query: Query, url: str) -> tuple[int, dict[str, str], str]:
        if "starting_after" in query:
            ids = [o["id"] for o in objects]
            objects = objects[ids.index(query["starting_after"]) + 1 :]
        limit = int(query.get("limit", 10))
        page = {"object": "list", "data": objects[:limit], "has_more": len(objects) > limit, "url": url}
        return 200, {"Content-Type": "application/json"}, json.dumps(page)
