"""The console in headless Chromium (Debian's chromium and chromedriver, driven by Selenium): a pipeline fed
the scripted scenario of tests/pipeline/test_console.py; every page shows the numbers /v1/* answers, the
overview leads to a trace's waterfall by clicking, and the browser logs no error (the Content-Security-Policy
included: every asset is the pipeline's own).  Screenshots of each page go to docs/img/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.pipeline.test_console import start_scenario

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="needs Debian's chromium and chromium-driver (make debian-deps)")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    s = start_scenario(tmp_path_factory.mktemp("console-browser"))
    yield s
    s.service.shutdown()


@pytest.fixture(scope="module")
def browser():
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def shot(driver, name: str) -> None:
    """The page's screenshot, after checking the browser logged no error on it."""
    assert errors(driver) == [], name
    IMG.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1500, min(max(height + 40, 600), 2200))
    driver.save_screenshot(str(IMG / f"console-{name}.png"))


@pytest.mark.slow
def test_each_page_shows_the_apis_numbers_and_the_overview_leads_to_a_trace(scenario, browser):
    decisions = {d["agent_id"]: d["action"] for d in scenario.api("/v1/decisions")["decisions"]}
    browser.get(scenario.url("/ui?sort=status"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
    shown = {r.get_attribute("data-agent"): r.find_element(By.CSS_SELECTOR, "td.decision").text for r in rows}
    assert shown == {a: d for a, d in decisions.items()}
    assert rows[0].get_attribute("data-agent") == "support-bot"  # exhausted SLOs sort first
    shot(browser, "fleet")
    # Typing in the filter box hides the other agents (the console's few lines of script).
    browser.find_element(By.NAME, "q").send_keys("billing")
    visible = [r.get_attribute("data-agent") for r in browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
               if r.is_displayed()]
    assert visible == ["billing-bot"]

    slo = next(r for r in scenario.api("/v1/slos")["slos"] if r["agent_id"] == "support-bot" and r["slo"] == "task-success")
    browser.get(scenario.url("/ui/slo?agent=support-bot&slo=task-success"))
    assert browser.find_element(By.CSS_SELECTOR, "b.budget").text == f"{slo['budget_remaining']:.1%}"
    shot(browser, "slo")

    budget = next(b for b in scenario.api("/v1/costs")["budgets"] if b["subject"] == "billing-bot")
    browser.get(scenario.url("/ui/costs"))
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#budgets tbody tr") if "billing-bot" in r.text)
    assert f"{budget['utilisation']:.0%}" in row.text
    shot(browser, "costs")

    incident = scenario.api("/v1/incidents")["incidents"][0]
    browser.get(scenario.url(f"/ui/incidents/{incident['id']}"))
    assert browser.find_element(By.CSS_SELECTOR, "span.state").text == incident["state"]
    assert f"agent-sre incidents resolve {incident['id']}" in browser.find_element(By.CSS_SELECTOR, "pre.cli").text
    shot(browser, "incident")

    # From the overview to the planner's trace: its agent, then the trace, by clicking.
    browser.get(scenario.url("/ui"))
    # A click starts a navigation and returns: each next step waits for its page (a loaded box is slow).
    browser.find_element(By.CSS_SELECTOR, 'tr[data-agent="planner"] a.agent').click()
    WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#traces a.trace"))).click()
    WebDriverWait(browser, 30).until(EC.url_contains(f"/ui/traces/{scenario.traces['planner']}"))
    WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#waterfall tbody tr")))
    tree = scenario.api(f"/v1/traces/{scenario.traces['planner']}")
    assert browser.current_url.endswith(f"/ui/traces/{scenario.traces['planner']}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#waterfall tbody tr")) == tree["totals"]["spans"]
    assert "span link" in browser.find_element(By.CSS_SELECTOR, "#waterfall").text  # the delegated trace hangs here
    shot(browser, "trace")

    browser.get(scenario.url("/ui/sql"))
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#result tbody tr")))
    assert browser.find_elements(By.CSS_SELECTOR, "#result tbody tr")
    shot(browser, "sql")
    assert errors(browser) == []
