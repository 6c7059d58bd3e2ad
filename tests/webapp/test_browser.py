"""The dashboard in a real browser: headless Chromium logs in, opens every page,
reads back what Plotly drew and compares it with the seeded account.

Needs the Debian packages `chromium` and `chromium-driver`. Where they are not
installed the tests are skipped, and pytest's summary names the packages to
install; with SUBLEDGER_REQUIRE_BROWSER=1 (as .ci/run sets) they run anyway,
so a missing browser fails them instead. Screenshots are saved
under the test's tmp dir and their paths printed (`pytest -s` shows them).
`make screenshot` has the demo's overview saved as the README's picture too.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from ledger.db import Database
from ledger.settings import Settings
from tests.webapp.seed import EUR_MRR, USD_MRR, Seeded, seed
from tests.worker.test_demo import RunningDemo, api_get
from webapp.report import money

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage")

README_SCREENSHOT = os.environ.get("SUBLEDGER_README_SCREENSHOT")
"""Where the demo's overview is copied for the README (`make screenshot`); unset, it stays in tmp."""

REQUIRED = os.environ.get("SUBLEDGER_REQUIRE_BROWSER") == "1"
"""Never skip: CI always runs the browser tests."""

pytestmark = pytest.mark.skipif(
    not REQUIRED and not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Chromium and its driver: apt-get install -y chromium chromium-driver",
)


@pytest.fixture
def seeded(db: Database) -> Seeded:
    return seed(db)


@pytest.fixture
def server(settings: Settings, make_app: Callable[[Settings], Flask], seeded: Seeded) -> Iterator[str]:
    """The app behind a real HTTP server on 127.0.0.1, in a thread."""
    # The seeded account bills USD and EUR: each is drawn on its own chart.
    httpd = make_server("127.0.0.1", 0, make_app(replace(settings, fx_reference_rates=False)), threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver: webdriver.Chrome, url: str, charts: int) -> None:
    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= charts)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) == charts


def plotted(driver: webdriver.Chrome, chart_id: str, trace: int = 0, axis: str = "y") -> list[Any]:
    """A trace's values as Plotly holds them after drawing."""
    values: list[Any] = driver.execute_script(
        "return document.getElementById(arguments[0]).data[arguments[1]][arguments[2]];", chart_id, trace, axis
    )
    return values


def shoot(driver: webdriver.Chrome, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    assert driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def log_in(driver: webdriver.Chrome, base: str, token: str = "test-token") -> None:
    driver.get(base + "/")
    assert "/login" in driver.current_url
    driver.find_element(By.NAME, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda d: d.current_url.rstrip("/") == base)


def major(amounts: tuple[int, ...]) -> list[float]:
    return [amount / 100 for amount in amounts]


def test_every_page_draws_the_seeded_figures(
    browser: webdriver.Chrome, server: str, seeded: Seeded, tmp_path: Path
) -> None:
    log_in(browser, server)

    open_page(browser, server + "/", charts=2)
    assert plotted(browser, "chart-mrr-usd") == [0.0] * 6 + major(USD_MRR)
    assert plotted(browser, "chart-mrr-eur") == [0.0] * 6 + major(EUR_MRR)
    names = browser.execute_script("return document.getElementById('chart-mrr-usd').data.map(t => t.name);")
    assert names == ["MRR", "New", "Expansion", "Reactivation", "Contraction", "Churn"]
    assert plotted(browser, "chart-mrr-usd", names.index("Churn"))[-3:] == [-300.0, 0.0, 0.0]
    assert plotted(browser, "chart-mrr-usd", names.index("Reactivation"))[-1] == 100.0
    shoot(browser, tmp_path, "overview")

    open_page(browser, server + f"/?start={seeded.label(0)}&interval=week", charts=2)
    assert plotted(browser, "chart-mrr-usd")[-1] == USD_MRR[-1] / 100
    shoot(browser, tmp_path, "overview-weekly")

    open_page(browser, server + "/cohorts", charts=4)
    assert plotted(browser, "chart-cohort-customers-usd", axis="z") == [
        [100, 100, 100, 50, 50, 50],
        [100, 100, 100, 100, 100, None],
        [100, 0, 0, 100, None, None],
        [100, None, None, None, None, None],
    ]
    assert plotted(browser, "chart-cohort-revenue-usd", axis="z")[0][:4] == [100, 100, 116.7, 50]
    shoot(browser, tmp_path, "cohorts")

    open_page(browser, server + "/plans", charts=2)
    assert plotted(browser, "chart-plans-usd", axis="y") == ["Platinum", "Gold", "Team", "Basic"]
    assert plotted(browser, "chart-plans-usd", axis="x") == [150, 100, 80, 60]
    assert plotted(browser, "chart-plans-eur", axis="x") == [90, 40]
    shoot(browser, tmp_path, "plans")

    open_page(browser, server + "/customers/cus_alice", charts=1)
    assert plotted(browser, "chart-customer-usd") == [100, 150, 150]
    assert browser.find_elements(By.CSS_SELECTOR, "a.source.run[href*='/reconciliation#run-backfill_']")
    shoot(browser, tmp_path, "customer")

    for page in ("movements", "customers", "reconciliation"):
        open_page(browser, server + f"/{page}", charts=0)
        assert browser.find_element(By.CSS_SELECTOR, "table tbody tr")
        shoot(browser, tmp_path, page)

    assert console_errors(browser) == []


def test_readable_on_a_phone(browser: webdriver.Chrome, server: str, tmp_path: Path) -> None:
    log_in(browser, server)
    browser.set_window_size(390, 844)
    for page, charts in (("/", 2), ("/cohorts", 4), ("/movements", 0)):
        open_page(browser, server + page, charts=charts)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth;")
        assert overflow <= 0, f"{page} scrolls sideways by {overflow}px on a phone"
        name = "phone-" + (page.strip("/") or "overview")
        shoot(browser, tmp_path, name)
        if charts:
            browser.execute_script("document.querySelector('.js-plotly-plot').scrollIntoView();")
            shoot(browser, tmp_path, name + "-chart")
    assert console_errors(browser) == []


@pytest.mark.slow
def test_the_demo_dashboard_shows_the_apis_mrr(browser: webdriver.Chrome, tmp_path: Path) -> None:
    """The README's picture: the overview of `subledger demo` on its default account."""
    demo = RunningDemo(tmp_path / "demo", customers=300)
    try:
        url, token = demo.wait_for_dashboard()
        answer = api_get(f"{url}/api/v1/summary", token)
        log_in(browser, url, token)
        browser.set_window_size(1280, 1100)
        open_page(browser, url + "/", charts=1)
        assert plotted(browser, "chart-mrr-usd")[-1] == answer["mrr"] / 100
        headline = browser.find_element(By.CSS_SELECTOR, "[data-metric=mrr] .value").text
        assert headline == money(answer["mrr"], "usd")
        assert console_errors(browser) == []
        picture = shoot(browser, tmp_path, "demo-overview")
    finally:
        status = demo.stop()
    assert status == 0, "".join(demo.output)
    if README_SCREENSHOT:
        shutil.copyfile(picture, README_SCREENSHOT)
