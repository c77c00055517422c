"""The site in a real headless browser (Debian's chromium through its chromedriver): a small real run for
the overview, sample browser and comparison; hostile text for escaping; 5,000 rows for speed. Every page
visited must send no request other than file:// and log no console error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tract_eval.cli import main
from tract_eval.reports.view import write_site
from view_helpers import PAYLOADS, SCRIPT, hostile_runs, large_run

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("no chromium/chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install .[test])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def visit(driver, page: Path) -> None:
    """Open a page, wait for its script, and check what it sent and logged."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("performance"), driver.get_log("browser")  # drop what earlier pages left
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
    if page.parent.name in ("runs", "compare"):
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    assert_only_local_requests(driver)
    assert_no_console_errors(driver)


def assert_only_local_requests(driver) -> None:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    assert urls, "the network log recorded nothing: the check would pass vacuously"
    assert all(url.startswith(("file://", "data:")) for url in urls), urls


def assert_no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors


def texts(driver, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


# -- a real run -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_site(tmp_path_factory, data_dir):
    """rail and tract (its CoTs, 8 new tokens) on the first 3 Vicuna Bench rows of the embedded model."""
    root = tmp_path_factory.mktemp("view-real")
    assert main(["run", "--judge", "rail,tract", "--bench", "vicuna", "--limit", "3", "--max-new-tokens", "8",
                 "--data-dir", str(data_dir), "--out", str(root / "runs"), "-q"]) == 0
    write_site([root / "runs"], root / "site")
    return root


def test_overview_shows_judges_and_benchmarks(browser, real_site):
    visit(browser, real_site / "site" / "index.html")
    assert texts(browser, "table.report th.judge") == ["rail", "tract"]
    assert "Vicuna Bench" in texts(browser, "table.report th.group")
    runs = texts(browser, "#runs tbody tr")
    assert len(runs) == 2 and all("embedded:SmolLM2-135M-Instruct" in r and "3/3" in r for r in runs)


def test_sample_browser_filters_sorts_and_opens(browser, real_site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    rows = [json.loads(line) for line in (real_site / "runs" / "tract" / "vicuna" / "predictions.jsonl")
            .read_text().splitlines()]
    visit(browser, real_site / "site" / "runs" / "tract__vicuna.html")
    assert len(texts(browser, "tr.sample-row")) == 3
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="abs_error"]').click()
    shown = [float(r.find_elements(By.TAG_NAME, "td")[3].text) for r in
             browser.find_elements(By.CSS_SELECTOR, "tr.sample-row")]
    errors = sorted((abs(r["prediction"] - r["gold"]) for r in rows), reverse=True)
    assert shown == [round(e, 3) for e in errors]
    browser.find_element(By.CSS_SELECTOR, 'th[data-sort="abs_error"]').click()
    assert [float(r.find_elements(By.TAG_NAME, "td")[3].text) for r in
            browser.find_elements(By.CSS_SELECTOR, "tr.sample-row")] == shown[::-1]

    search = browser.find_element(By.ID, "text-filter")
    search.send_keys(rows[1]["id"])
    assert [t.split()[0] for t in texts(browser, "tr.sample-row")] == [rows[1]["id"]]
    search.clear()
    search.send_keys(" ")  # clear() fires no input event; a space matches every row, then remove it
    search.send_keys("\b")
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("parse_failure")
    assert texts(browser, "tr.sample-row") == [] and "0 of 3" in browser.find_element(By.ID, "shown-count").text
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("ok")
    assert len(texts(browser, "tr.sample-row")) == 3

    first = browser.find_element(By.CSS_SELECTOR, "tr.sample-row")
    row = next(r for r in rows if r["id"] == first.text.split()[0])
    first.click()
    detail = browser.find_element(By.CSS_SELECTOR, "tr.detail")
    cot = detail.find_element(By.CSS_SELECTOR, "pre.cot-text")
    assert cot.get_attribute("textContent") == row["cots"][0] + "▲ score read here"
    assert detail.find_element(By.CSS_SELECTOR, ".cot-text .forced").get_attribute("textContent").strip() == \
        row["forced"][0].strip()
    bars = detail.find_elements(By.CSS_SELECTOR, ".bar-row")
    assert [b.find_element(By.CLASS_NAME, "k").text for b in bars] == ["1", "2", "3", "4", "5"]
    assert [b.find_element(By.CLASS_NAME, "p").text for b in bars] == \
        [f"{row['score_probs'][0][k]:.2f}" for k in "12345"]
    widths = browser.execute_script("return Array.from(document.querySelectorAll('tr.detail .fill'))"
                                    ".map(e => e.getBoundingClientRect().width)")
    assert max(widths) > 0
    input_box = detail.find_element(By.CSS_SELECTOR, "details.input")
    assert input_box.get_attribute("open") is None  # the input starts collapsed
    assert input_box.find_element(By.TAG_NAME, "pre").get_attribute("textContent") == row["input"]
    assert "eos" in detail.text or "delimiter" in detail.text or "length" in detail.text
    first.click()
    assert texts(browser, "tr.detail") == []
    assert_no_console_errors(browser)


def test_compare_sorts_by_disagreement(browser, real_site):
    visit(browser, real_site / "site" / "compare" / "vicuna.html")
    diffs = [float(t.split()[-3]) for t in texts(browser, "tr.compare-row")]
    assert len(diffs) == 3 and diffs == sorted(diffs, reverse=True)
    assert "3 samples both judged" in texts(browser, "#shown-count")[0]


# -- hostile text ----------------------------------------------------------------------------------------

def test_text_from_data_and_models_never_runs(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    write_site([hostile_runs(tmp_path / "runs")], tmp_path / "site")
    pages = [tmp_path / "site" / "index.html", *sorted((tmp_path / "site" / "runs").glob("*.html")),
             tmp_path / "site" / "compare" / "vicuna.html"]
    for page in pages:
        visit(browser, page)
        if page.parent.name == "runs":  # open every sample and every CoT, input included
            for row in browser.find_elements(By.CSS_SELECTOR, "tr.sample-row"):
                row.click()
            browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
            shown = browser.find_element(By.ID, "samples").text
            for payload in PAYLOADS:
                assert payload in shown, (page.name, payload)  # shown literally, as text
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        injected = browser.execute_script(
            "return document.querySelectorAll('#injected, img:not(.plot), textarea, b#injected').length")
        scripts = browser.execute_script("return Array.from(document.scripts).map(s => s.src)")
        assert injected == 0 and all(src.startswith("file://") for src in scripts), (page.name, scripts)
        assert_no_console_errors(browser)
    assert SCRIPT in browser.find_element(By.TAG_NAME, "body").text  # compare page: ids shown as text


# -- 5,000 rows -------------------------------------------------------------------------------------------

def test_five_thousand_rows_open_in_under_two_seconds(browser, tmp_path):
    from selenium.webdriver.common.by import By

    write_site([large_run(tmp_path / "runs")], tmp_path / "site")
    page = tmp_path / "site" / "runs" / "big__vicuna.html"
    size = (tmp_path / "site" / "data" / "big__vicuna.js").stat().st_size
    visit(browser, page)
    ready = browser.execute_script("return performance.getEntriesByName('tract-view-ready')[0].startTime")
    loaded = browser.execute_script("const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd")
    print(f"\n5,000 rows ({size / 1e6:.1f} MB of row data): ready {ready:.0f} ms, load event {loaded:.0f} ms "
          "after navigation start")
    assert "5000 of 5000 samples" in browser.find_element(By.ID, "shown-count").text
    assert len(texts(browser, "tr.sample-row")) == 50
    assert ready < 2000 and loaded < 2000
