"""The app in headless Chromium: Run streams previews and heatmaps, Stop stops, and a screenshot is kept
at assets/app_screenshot.png. Needs Debian's chromium (`apt-get install -y chromium chromium-driver`) and
`pip install playwright` (never `playwright install`: the system browser is used)."""

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "assets" / "app_screenshot.png"
STEPS = 12

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    os.environ["LAYERCACHE_CACHE_DIR"] = str(tmp_path_factory.mktemp("calibrations"))
    import app

    app.configure_torch()
    d = app.DEFAULTS
    for steps in (STEPS, 50):   # calibrate and check the plans up front: the tests time the runs, not the planning
        app.bench.method(d["model"], d["method"], steps, d["groups"], d["budget"], d["max_k"])
    demo = app.build_demo()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1250})
        page.goto(url)
        page.wait_for_selector("#run", timeout=60_000)
        yield page
        browser.close()


# rows of the history table (one cell per line in its text; each row starts with the model key), and the runs on
# the Pareto chart
HISTORY_ROWS = "(document.querySelector('#history').innerText.match(/^tiny$/gm) || []).length"
PARETO_POINTS = """(() => { const div = document.querySelector('#pareto .js-plotly-plot');
    return div && div.data ? div.data.filter(t => t.mode === 'markers').reduce((n, t) => n + t.y.length, 0) : -1;
    })()"""


def set_steps(page, steps):
    box = page.locator("#steps input[type=number]")
    box.fill(str(steps))
    box.press("Enter")


def heat_values(page, key):
    """Non-empty cells of a heatmap, read from the data Plotly drew."""
    return page.evaluate(f"""() => {{
        const div = document.querySelector('#heat_{key} .js-plotly-plot');
        return div && div.data ? div.data[0].z.flat().filter(v => v !== null).length : -1; }}""")


def image_src(page, elem):
    img = page.locator(f"#{elem} img")
    return img.get_attribute("src") if img.count() else None


def watch_previews(page):
    """Record every image the uncached preview shows (the test is too slow to sample them itself)."""
    page.evaluate("""() => {
        window.__srcs = new Set();
        new MutationObserver(() => document.querySelectorAll('#uncached img').forEach(i => window.__srcs.add(i.src)))
            .observe(document.querySelector('#uncached'), {subtree: true, childList: true, attributes: true}); }""")


def test_run_streams_previews_and_heatmaps(page):
    set_steps(page, STEPS)
    watch_previews(page)
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Step 3/')", timeout=60_000)
    assert image_src(page, "uncached") and image_src(page, "cached")
    mid = heat_values(page, "computed")
    assert mid > 0
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)
    assert page.evaluate("window.__srcs.size") >= 3  # the preview changed as the steps went on
    groups = int(page.evaluate("document.querySelector('#heat_computed .js-plotly-plot').data[0].z.length"))
    assert heat_values(page, "computed") == STEPS * groups
    assert heat_values(page, "velocity") > 0 and heat_values(page, "k") > 0
    assert "psnr_db" in page.locator("#metrics").inner_text()
    page.wait_for_function(f"{HISTORY_ROWS} === 1", timeout=20_000)   # the run is in this session's history
    assert page.evaluate(PARETO_POINTS) == 1
    page.wait_for_timeout(500)  # let the last images paint
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_stop_mid_run_then_run_again(page):
    set_steps(page, 50)  # a shipped calibration (no calibrating first), and long enough to stop mid-run
    page.click("#run")
    # an early step: a fast step can replace "Step 3/50" before the page is polled
    page.wait_for_function("/Step [3-9]\\/50/.test(document.querySelector('#status').innerText)",
                           timeout=60_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Stopped')", timeout=20_000)
    page.wait_for_timeout(1500)
    assert "Stopped" in page.locator("#status").inner_text()  # no further step arrived
    assert page.evaluate(HISTORY_ROWS) == 1   # a stopped run adds no row
    set_steps(page, STEPS)
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)
    page.wait_for_function(f"{HISTORY_ROWS} === 2", timeout=20_000)
    files = page.locator("#history-files").inner_text()
    assert ".csv" in files and ".json" in files   # CSV and JSON to download


def test_history_is_per_session(page, url):
    # after the runs above (the page is module-scoped): a second visitor, its own cookies and session, sees none
    visitor = page.context.browser.new_context(viewport={"width": 1440, "height": 1250})
    try:
        other = visitor.new_page()
        other.goto(url)
        other.wait_for_selector("#run", timeout=60_000)
        assert other.evaluate(HISTORY_ROWS) == 0
        assert page.evaluate(HISTORY_ROWS) == 2   # the first visitor's runs are still there
    finally:
        visitor.close()
