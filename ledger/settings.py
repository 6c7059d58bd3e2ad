"""Every setting subledger reads, with its default, in one place.

Values come from the environment (and a `.env` file read at start). Each one is
validated when loaded: a missing or malformed setting raises `ConfigError`
naming the variable, and the command line turns that into one line on stderr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Literal

from croniter import croniter

from ledger.errors import SubledgerError

RULES_REVISION = "1"
"""Bumped whenever the MRR rules code changes what it computes."""

DEFAULT_DATABASE_URL = "sqlite:///subledger.db"
"""Local file database used when DATABASE_URL is not set."""

DEFAULT_RECONCILE_CRON = "0 3 * * *"
"""Nightly reconciliation, 03:00 UTC."""

DEFAULT_STRIPE_RATE_SHARE = 0.8
"""Share of Stripe's published rate limit subledger allows itself."""

DEFAULT_STRIPE_API_VERSION = "2025-10-29.clover"
"""The Stripe API version subledger reads with: the shapes its payload handling is written and
tested for. Chosen here, not inherited from the installed SDK, whose default moves with each release."""

ChurnRecognition = Literal["ended", "request"]
DiscountsOnce = Literal["ignore", "subtract"]
Netting = Literal["day", "none"]


ENV_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "STRIPE_API_VERSION",
    "STRIPE_WEBHOOK_SECRET",
    "SUBLEDGER_API_TOKEN",
    "REPORTING_CURRENCY",
    "FX_RATES_FILE",
    "FX_REFERENCE_RATES",
    "RECONCILE_CRON",
    "STRIPE_RATE_SHARE",
    "CHURN_RECOGNITION",
    "PAST_DUE_GRACE_DAYS",
    "DISCOUNTS_ONCE",
    "REACTIVATION_WINDOW_DAYS",
    "NETTING",
)
"""Every variable subledger reads (README and .env.example document each one)."""


class ConfigError(SubledgerError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class RuleSettings:
    """The MRR rule choices of mrr-rules.md that people disagree about."""

    churn_recognition: ChurnRecognition = "ended"
    """`ended`: churn at `ended_at`; `request`: churn at `canceled_at`."""

    past_due_grace_days: int | None = None
    """Days a subscription may stay past_due before it churns as delinquent; None = never."""

    discounts_once: DiscountsOnce = "ignore"
    """`ignore`: once-coupons never reduce MRR; `subtract`: during their first period."""

    reactivation_window_days: int | None = None
    """A customer returning after a longer gap counts as new, not reactivation; None = any gap."""

    netting: Netting = "day"
    """`day`: one movement per customer and UTC day; `none`: one per change."""

    @property
    def version(self) -> str:
        """Rules revision plus every setting, stored on each movement."""
        grace = "-" if self.past_due_grace_days is None else str(self.past_due_grace_days)
        window = "-" if self.reactivation_window_days is None else str(self.reactivation_window_days)
        return (
            f"r{RULES_REVISION};churn={self.churn_recognition};grace={grace};"
            f"once={self.discounts_once};window={window};netting={self.netting}"
        )


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration."""

    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL of the ledger database."""

    redis_url: str | None = None
    """Redis for RQ; None means local use with an embedded server."""

    stripe_api_key: str | None = None
    """Secret or restricted key; backfill and reconcile need it."""

    stripe_api_base: str | None = None
    """Alternative Stripe API base URL (a local fake, a proxy)."""

    stripe_api_version: str = DEFAULT_STRIPE_API_VERSION
    """`Stripe-Version` of every request to the Stripe API, recorded on each run."""

    webhook_secrets: tuple[str, ...] = ()
    """Endpoint signing secrets; several during a rotation."""

    api_token: str | None = None
    """Bearer token for the API and the dashboard login."""

    reporting_currency: str = "usd"
    """Currency reports are shown in."""

    fx_rates_file: Path | None = None
    """CSV `date,currency,rate`; overrides the reference rates."""

    fx_reference_rates: bool = True
    """Without a rates file, convert at the ECB's reference rates (`FX_REFERENCE_RATES=ecb`);
    False (`off`) reports each currency apart."""

    reconcile_cron: str = DEFAULT_RECONCILE_CRON
    """When the clock process runs reconciliation."""

    stripe_rate_share: float = DEFAULT_STRIPE_RATE_SHARE
    """Share of Stripe's rate limit to use (0 < share <= 1)."""

    rules: RuleSettings = field(default_factory=RuleSettings)
    """MRR rule settings."""

    @property
    def livemode(self) -> bool | None:
        """The Stripe mode the API key belongs to; None without a key."""
        if not self.stripe_api_key:
            return None
        return "_live_" in self.stripe_api_key


_CURRENCY = re.compile(r"^[a-z]{3}$")
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z]+$")
_API_VERSION = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})(\.[a-z]+)?$")


def _text(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = (_text(env, name) or default).lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
    return value


def _days(env: Mapping[str, str], name: str) -> int | None:
    value = _text(env, name)
    if value is None:
        return None
    # isascii: str.isdigit also accepts digits int() rejects, such as "²".
    if not (value.isascii() and value.isdigit()):
        raise ConfigError(f"{name} must be a whole number of days (got {value!r})")
    return int(value)


def _database_url(env: Mapping[str, str]) -> str:
    url = _text(env, "DATABASE_URL") or DEFAULT_DATABASE_URL
    # Heroku-style URLs name the scheme "postgres"; SQLAlchemy wants an explicit driver.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    if not re.match(r"^(sqlite|postgresql\+psycopg)://", url):
        raise ConfigError("DATABASE_URL must be a sqlite:/// or postgresql:// URL")
    return url


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = _text(env, "REDIS_URL")
    if url is not None and not re.match(r"^(redis|rediss|unix)://", url):
        raise ConfigError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
    return url


def _api_base(env: Mapping[str, str]) -> str | None:
    url = _text(env, "STRIPE_API_BASE")
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise ConfigError("STRIPE_API_BASE must be an http:// or https:// URL")
    return url.rstrip("/") if url else None


def _api_version(env: Mapping[str, str]) -> str:
    value = _text(env, "STRIPE_API_VERSION")
    if value is None:
        return DEFAULT_STRIPE_API_VERSION
    found = _API_VERSION.match(value)
    try:
        if found is None:
            raise ValueError(value)
        date.fromisoformat(found["date"])  # a real day: "2025-13-40" is a typo, not a version
    except ValueError:
        raise ConfigError(
            f"STRIPE_API_VERSION must be a Stripe API version such as {DEFAULT_STRIPE_API_VERSION} (got {value!r})"
        ) from None
    return value


def _api_key(env: Mapping[str, str]) -> str | None:
    key = _text(env, "STRIPE_API_KEY")
    if key is not None and not re.match(r"^(sk|rk)_(test|live)_\w+$", key):
        raise ConfigError("STRIPE_API_KEY must be a secret (sk_…) or restricted (rk_…) key")
    return key


def _webhook_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _text(env, "STRIPE_WEBHOOK_SECRET") or ""
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ConfigError("STRIPE_WEBHOOK_SECRET must hold whsec_… secrets, comma-separated")
    return secrets


def _currency(env: Mapping[str, str]) -> str:
    currency = (_text(env, "REPORTING_CURRENCY") or "usd").lower()
    if not _CURRENCY.match(currency):
        raise ConfigError(f"REPORTING_CURRENCY must be a 3-letter ISO code (got {currency!r})")
    return currency


def _fx_file(env: Mapping[str, str], reporting_currency: str) -> Path | None:
    value = _text(env, "FX_RATES_FILE")
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"FX_RATES_FILE {value!r} is not a readable file")
    from ledger.fx import FxRatesError, load_rates  # ledger.fx needs the rules, which need this module

    try:
        load_rates(path, reporting_currency=reporting_currency)
    except FxRatesError as exc:
        raise ConfigError(f"FX_RATES_FILE: {exc}") from None
    return path


def _cron(env: Mapping[str, str]) -> str:
    value = _text(env, "RECONCILE_CRON") or DEFAULT_RECONCILE_CRON
    fields = value.split()
    # croniter is what schedules it: a field out of range ("99") is caught now, not at 03:00.
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields) or not croniter.is_valid(value):
        raise ConfigError(f"RECONCILE_CRON must be a 5-field cron expression (got {value!r})")
    return value


def _rate_share(env: Mapping[str, str]) -> float:
    value = _text(env, "STRIPE_RATE_SHARE")
    if value is None:
        return DEFAULT_STRIPE_RATE_SHARE
    try:
        share = float(value)
    except ValueError:
        share = -1.0
    if not 0 < share <= 1:
        raise ConfigError(f"STRIPE_RATE_SHARE must be a number in (0, 1] (got {value!r})")
    return share


def load_rules(env: Mapping[str, str]) -> RuleSettings:
    """Rule settings from the environment."""
    return RuleSettings(
        churn_recognition=_choice(env, "CHURN_RECOGNITION", ("ended", "request"), "ended"),  # type: ignore[arg-type]
        past_due_grace_days=_days(env, "PAST_DUE_GRACE_DAYS"),
        discounts_once=_choice(env, "DISCOUNTS_ONCE", ("ignore", "subtract"), "ignore"),  # type: ignore[arg-type]
        reactivation_window_days=_days(env, "REACTIVATION_WINDOW_DAYS"),
        netting=_choice(env, "NETTING", ("day", "none"), "day"),  # type: ignore[arg-type]
    )


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Settings from `env` (default: os.environ, after reading `.env` if present)."""
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(Path.cwd() / ".env", override=False)
        env = os.environ
    return Settings(
        database_url=_database_url(env),
        redis_url=_redis_url(env),
        stripe_api_key=_api_key(env),
        stripe_api_base=_api_base(env),
        stripe_api_version=_api_version(env),
        webhook_secrets=_webhook_secrets(env),
        api_token=_text(env, "SUBLEDGER_API_TOKEN"),
        reporting_currency=_currency(env),
        fx_rates_file=_fx_file(env, _currency(env)),
        fx_reference_rates=_choice(env, "FX_REFERENCE_RATES", ("ecb", "off"), "ecb") == "ecb",
        reconcile_cron=_cron(env),
        stripe_rate_share=_rate_share(env),
        rules=load_rules(env),
    )
