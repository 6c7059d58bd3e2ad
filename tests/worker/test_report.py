"""`subledger report`: the month's KPIs in the terminal, as JSON and as CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import date

import pytest

from ledger.db import Database, utcnow
from ledger.fx import RatesInfo, ReferenceRates, convert
from tests.ledger.sample_account import account, usd_and_gbp
from worker.cli import main


@pytest.fixture
def env(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", db.url)
    for name in ("STRIPE_API_KEY", "FX_RATES_FILE", "FX_REFERENCE_RATES", "REPORTING_CURRENCY"):
        monkeypatch.delenv(name, raising=False)
    account(db)


def test_a_report_in_two_currencies_converts_at_the_ecbs_rates_and_says_so(
    env: None, db: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    usd_and_gbp(db)
    assert main(["report", "--month", "2024-03"]) == 0
    out, err = capsys.readouterr()
    rates = ReferenceRates("usd")
    gbp = convert(5000, "gbp", date(2024, 3, 31), rates)
    assert gbp is not None
    assert f"{(23000 + gbp) / 100:,.2f} USD" in out
    info = RatesInfo.of(rates, utcnow().date())
    assert f"Converted to USD at {info.source}, newest rate {info.last_date}." in out
    assert err == (f"warning: {info.warning}\n" if info.warning else "")


def test_json_report_has_every_kpi(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--month", "2024-03", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["month"], report["currency"], report["mrr"], report["churn"]) == ("2024-03", "usd", 23000, -20000)
    assert report["nrr"] == 0.5
    assert report["grr"] == pytest.approx(0.333333)
    assert report["fx_adjustment"] == 0


def test_csv_report_is_one_row_with_a_header(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--month", "2024-03", "--format", "csv"]) == 0
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert (row["mrr_start"], row["mrr"], row["quick_ratio"]) == ("30000", "23000", "0.65")


def test_table_report_shows_the_bridge_and_kpis(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--month", "2024-03"]) == 0
    out = capsys.readouterr().out
    for text in ("MRR bridge 2024-03 (USD)", "300.00 USD", "-200.00 USD", "230.00 USD", "nrr", "50.00%", "0.65x"):
        assert text in out


def test_a_bad_month_is_one_line(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--month", "March"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "subledger: argument --month: 'March' is not a month (YYYY-MM) (see `subledger report --help`)"
    ]


def test_a_month_not_started_is_one_line(env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--month", "2099-12"]) != 0
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("subledger: --month: 2099-12 has not started (today is ")
