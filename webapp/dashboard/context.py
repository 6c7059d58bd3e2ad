"""What every page needs to read the ledger: which mode, what day, which FX rates."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy.orm import Session

from ledger.db import utcnow
from ledger.fx import FxRatesError, Rates, RatesInfo, RateTable, load_rates
from ledger.settings import Settings
from ledger.summary import default_livemode
from webapp.services import services

STRIPE_DASHBOARD = "https://dashboard.stripe.com/"


@dataclass(frozen=True)
class LedgerView:
    settings: Settings
    livemode: bool
    now: datetime
    rates: Rates | None
    rates_error: str | None
    """FX_RATES_FILE could not be read now (it was valid at start): shown, never a 500."""

    @property
    def rates_info(self) -> RatesInfo | None:
        return RatesInfo.of(self.rates, self.today) if self.rates is not None else None

    @property
    def today(self) -> date:
        return self.now.date()

    @property
    def reporting_currency(self) -> str:
        return self.settings.reporting_currency

    def stripe_url(self, kind: str, object_id: str, livemode: bool | None = None) -> str:
        """The object in Stripe's dashboard, in its own mode (the page's unless given)."""
        live = self.livemode if livemode is None else livemode
        return f"{STRIPE_DASHBOARD}{'' if live else 'test/'}{kind}/{object_id}"


@functools.lru_cache(maxsize=4)
def _rates(path: Path, modified: float, reporting_currency: str) -> RateTable:
    return load_rates(path, reporting_currency=reporting_currency)


def ledger_view(session: Session) -> LedgerView:
    settings = services().settings
    rates, error = services().rates, None
    if settings.fx_rates_file is not None:
        try:
            modified = settings.fx_rates_file.stat().st_mtime
            rates = _rates(settings.fx_rates_file, modified, settings.reporting_currency)
        except (OSError, FxRatesError) as exc:
            rates = None
            error = f"FX_RATES_FILE could not be read ({exc}); each currency is shown apart."
    livemode = default_livemode(session, settings.livemode)
    return LedgerView(settings, livemode, utcnow(), rates, error)
