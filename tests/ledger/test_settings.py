"""Settings: their defaults, how each variable is read, and one clear error per malformed one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_RECONCILE_CRON,
    DEFAULT_STRIPE_API_VERSION,
    DEFAULT_STRIPE_RATE_SHARE,
    ENV_VARIABLES,
    ConfigError,
    RuleSettings,
    load_settings,
)

MALFORMED = [
    pytest.param("DATABASE_URL", "mysql://x", id="DATABASE_URL mysql"),
    pytest.param("DATABASE_URL", "subledger.db", id="DATABASE_URL bare path"),
    pytest.param("REDIS_URL", "http://x", id="REDIS_URL http"),
    pytest.param("STRIPE_API_KEY", "pk_test_51abc", id="STRIPE_API_KEY publishable key"),
    pytest.param("STRIPE_API_KEY", "sk_prod_51abc", id="STRIPE_API_KEY unknown mode"),
    pytest.param("STRIPE_API_BASE", "localhost:12111", id="STRIPE_API_BASE without scheme"),
    pytest.param("STRIPE_API_VERSION", "latest", id="STRIPE_API_VERSION a word"),
    pytest.param("STRIPE_API_VERSION", "2025-13-40.clover", id="STRIPE_API_VERSION not a day"),
    pytest.param("STRIPE_API_VERSION", "2025-10-29 clover", id="STRIPE_API_VERSION space"),
    pytest.param("STRIPE_WEBHOOK_SECRET", "abc", id="STRIPE_WEBHOOK_SECRET not whsec_"),
    pytest.param("STRIPE_WEBHOOK_SECRET", "whsec_ok,abc", id="STRIPE_WEBHOOK_SECRET one bad of two"),
    pytest.param("REPORTING_CURRENCY", "dollars", id="REPORTING_CURRENCY not ISO"),
    pytest.param("FX_RATES_FILE", "/nonexistent/rates.csv", id="FX_RATES_FILE missing file"),
    pytest.param("RECONCILE_CRON", "0 3 * *", id="RECONCILE_CRON four fields"),
    pytest.param("RECONCILE_CRON", "every night", id="RECONCILE_CRON words"),
    pytest.param("RECONCILE_CRON", "99 3 * * *", id="RECONCILE_CRON minute out of range"),
    pytest.param("STRIPE_RATE_SHARE", "1.5", id="STRIPE_RATE_SHARE above 1"),
    pytest.param("STRIPE_RATE_SHARE", "0", id="STRIPE_RATE_SHARE zero"),
    pytest.param("STRIPE_RATE_SHARE", "most", id="STRIPE_RATE_SHARE not a number"),
    pytest.param("STRIPE_RATE_SHARE", "nan", id="STRIPE_RATE_SHARE nan"),
    pytest.param("CHURN_RECOGNITION", "sometimes", id="CHURN_RECOGNITION unknown"),
    pytest.param("PAST_DUE_GRACE_DAYS", "-3", id="PAST_DUE_GRACE_DAYS negative"),
    pytest.param("PAST_DUE_GRACE_DAYS", "2.5", id="PAST_DUE_GRACE_DAYS fraction"),
    pytest.param("PAST_DUE_GRACE_DAYS", "²", id="PAST_DUE_GRACE_DAYS superscript digit"),
    pytest.param("DISCOUNTS_ONCE", "always", id="DISCOUNTS_ONCE unknown"),
    pytest.param("REACTIVATION_WINDOW_DAYS", "ninety", id="REACTIVATION_WINDOW_DAYS words"),
    pytest.param("NETTING", "week", id="NETTING unknown"),
    pytest.param("FX_REFERENCE_RATES", "imf", id="FX_REFERENCE_RATES unknown"),
]
"""One or more malformed values of every variable that is validated."""


def test_defaults_without_any_variable() -> None:
    settings = load_settings({})
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///subledger.db"
    assert settings.redis_url is None
    assert settings.stripe_api_key is None
    assert settings.stripe_api_base is None
    assert settings.stripe_api_version == DEFAULT_STRIPE_API_VERSION == "2025-10-29.clover"
    assert settings.webhook_secrets == ()
    assert settings.api_token is None
    assert settings.reporting_currency == "usd"
    assert settings.fx_rates_file is None
    assert settings.reconcile_cron == DEFAULT_RECONCILE_CRON == "0 3 * * *"
    assert settings.stripe_rate_share == DEFAULT_STRIPE_RATE_SHARE
    assert settings.rules == RuleSettings()
    assert settings.livemode is None


def test_default_rules_follow_the_spec_and_are_versioned() -> None:
    rules = load_settings({}).rules
    assert (rules.churn_recognition, rules.past_due_grace_days, rules.discounts_once) == ("ended", None, "ignore")
    assert (rules.reactivation_window_days, rules.netting) == (None, "day")
    assert rules.version == RuleSettings().version == "r1;churn=ended;grace=-;once=ignore;window=-;netting=day"


def test_rule_settings_are_read_and_change_the_version() -> None:
    rules = load_settings(
        {
            "CHURN_RECOGNITION": "Request",
            "PAST_DUE_GRACE_DAYS": "14",
            "DISCOUNTS_ONCE": "subtract",
            "REACTIVATION_WINDOW_DAYS": "0",
            "NETTING": "none",
        }
    ).rules
    assert rules == RuleSettings("request", 14, "subtract", 0, "none")
    assert rules.version == "r1;churn=request;grace=14;once=subtract;window=0;netting=none"


def test_blank_variables_count_as_unset() -> None:
    settings = load_settings({"DATABASE_URL": "  ", "REDIS_URL": "", "PAST_DUE_GRACE_DAYS": " "})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.redis_url is None
    assert settings.rules.past_due_grace_days is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(
            "postgres://u:p@db:5432/ledger", "postgresql+psycopg://u:p@db:5432/ledger", id="heroku postgres://"
        ),
        pytest.param("postgresql://u@db/ledger", "postgresql+psycopg://u@db/ledger", id="postgresql://"),
        pytest.param("postgresql+psycopg://u@db/ledger", "postgresql+psycopg://u@db/ledger", id="explicit driver kept"),
        pytest.param("sqlite:////var/lib/subledger.db", "sqlite:////var/lib/subledger.db", id="sqlite file"),
    ],
)
def test_database_url_gets_the_psycopg_driver(given: str, expected: str) -> None:
    assert load_settings({"DATABASE_URL": given}).database_url == expected


def test_webhook_secrets_are_comma_separated_for_rotation() -> None:
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": " whsec_old , whsec_new,,"})
    assert settings.webhook_secrets == ("whsec_old", "whsec_new")


def test_stripe_api_base_loses_its_trailing_slash() -> None:
    assert load_settings({"STRIPE_API_BASE": "http://localhost:12111/"}).stripe_api_base == "http://localhost:12111"


@pytest.mark.parametrize("version", ["2025-10-29.clover", "2020-03-02", "2024-09-30.acacia"])
def test_stripe_api_version_is_kept_as_given(version: str) -> None:
    assert load_settings({"STRIPE_API_VERSION": version}).stripe_api_version == version


def test_reporting_currency_is_lowercased() -> None:
    assert load_settings({"REPORTING_CURRENCY": "EUR"}).reporting_currency == "eur"


def test_fx_rates_file_is_kept_as_a_path(tmp_path: Path) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2024-01-01,eur,1.1\n")
    assert load_settings({"FX_RATES_FILE": str(rates)}).fx_rates_file == rates


@pytest.mark.parametrize(
    ("key", "livemode"),
    [
        pytest.param("sk_live_51abc", True, id="live secret key"),
        pytest.param("rk_live_51abc", True, id="live restricted key"),
        pytest.param("sk_test_51abc", False, id="test secret key"),
        pytest.param("rk_test_51abc", False, id="test restricted key"),
    ],
)
def test_livemode_follows_the_api_key(key: str, livemode: bool) -> None:
    assert load_settings({"STRIPE_API_KEY": key}).livemode is livemode


@pytest.mark.parametrize(("variable", "value"), MALFORMED)
def test_malformed_variable_is_a_config_error_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings({variable: value})


def test_every_validated_variable_has_a_malformed_case() -> None:
    # The table above covers every variable except the free-form API token.
    covered = {param.values[0] for param in MALFORMED}
    assert covered == set(ENV_VARIABLES) - {"SUBLEDGER_API_TOKEN"}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A working directory of its own and none of subledger's variables set.

    Each variable is set then deleted, so monkeypatch also removes whatever a
    `.env` file puts into os.environ during the test.
    """
    for variable in ENV_VARIABLES:
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_dotenv_file_in_the_working_directory_is_read(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        "DATABASE_URL=postgres://u@db/ledger\nREPORTING_CURRENCY=eur\nNETTING=none\n"
    )
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://u@db/ledger"
    assert settings.reporting_currency == "eur"
    assert settings.rules.netting == "none"


def test_real_environment_variable_wins_over_dotenv(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_environment / ".env").write_text("REPORTING_CURRENCY=eur\nNETTING=none\n")
    monkeypatch.setenv("REPORTING_CURRENCY", "gbp")
    settings = load_settings()
    assert settings.reporting_currency == "gbp"
    assert settings.rules.netting == "none"
    assert os.environ["REPORTING_CURRENCY"] == "gbp"


def test_dotenv_is_not_read_when_disabled(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("REPORTING_CURRENCY=eur\n")
    assert load_settings(dotenv=False).reporting_currency == "usd"


def test_malformed_dotenv_value_is_a_config_error(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text("CHURN_RECOGNITION=sometimes\n")
    with pytest.raises(ConfigError, match="CHURN_RECOGNITION"):
        load_settings()


def test_fx_rates_file_content_is_checked_at_start(tmp_path: Path) -> None:
    rates = tmp_path / "rates.csv"
    rates.write_text("date,currency,rate\n2024-01-01,eur,1.1\n2024-13-01,gbp,1.3\n")
    with pytest.raises(ConfigError, match=r"^FX_RATES_FILE: .*line 3"):
        load_settings({"FX_RATES_FILE": str(rates)})


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_variable_is_documented(document: str) -> None:
    text = (Path(__file__).resolve().parents[2] / document).read_text()
    assert [variable for variable in ENV_VARIABLES if variable not in text] == []
