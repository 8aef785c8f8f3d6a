"""The app in headless Chromium: Run streams previews and heatmaps, Stop stops, the history and Pareto fill in,
a painted schedule runs, a lesson button sets the inputs, and the layout fits a projector (1280x800: inputs, Run
and both images without scrolling) and a phone (390 px: one column). Screenshots are kept at
assets/app_screenshot.png (after a run), assets/app_1280x800.png and assets/app_390.png.
Needs Debian's chromium (`apt-get install -y chromium chromium-driver`) and
`pip install playwright` (never `playwright install`: the system browser is used)."""

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SCREENSHOT = ASSETS / "app_screenshot.png"
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
    # calibrate and check the plan up front: the tests time the runs, not the planning
    app.bench.method(d["model"], d["method"], STEPS, d["groups"], d["budget"], d["max_k"])
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


def set_method(page, label):
    page.locator("#method input").click()
    page.get_by_role("option", name=label, exact=True).click()
    page.wait_for_function(f"document.querySelector('#method input').value === {label!r}", timeout=20_000)


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
    readout = page.locator("#metrics").inner_text()
    assert "PSNR" in readout and "what it means" in readout and "dB" in readout
    page.wait_for_function(f"{HISTORY_ROWS} === 1", timeout=20_000)   # the run is in this session's history
    assert page.evaluate(PARETO_POINTS) == 1
    page.wait_for_timeout(500)  # let the last images paint
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_stop_mid_run_then_run_again(page):
    # long enough to stop mid-run; MeanCache as the app runs it plans in no time (LayerCache's plan check at 50 steps
    # would take two minutes here)
    set_method(page, "MeanCache")
    set_steps(page, 50)
    page.click("#run")
    # an early step: a fast step can replace "Step 3/50" before the page is polled
    page.wait_for_function("/Step [3-9]\\/50/.test(document.querySelector('#status').innerText)",
                           timeout=60_000)
    page.click("#stop")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Stopped')", timeout=20_000)
    page.wait_for_timeout(1500)
    assert "Stopped" in page.locator("#status").inner_text()  # no further step arrived
    assert page.evaluate(HISTORY_ROWS) == 1   # a stopped run adds no row
    set_method(page, "LayerCache")
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
        other.wait_for_selector("#history", state="attached", timeout=60_000)   # on a loaded machine: after #run
        assert other.evaluate(HISTORY_ROWS) == 0
        assert page.evaluate(HISTORY_ROWS) == 2   # the first visitor's runs are still there
    finally:
        visitor.close()


def cell_texts(page):
    """The schedule map as rows of cell texts (Gradio's table draws its body as grid cells)."""
    return page.evaluate("""() => { const rows = [];
        document.querySelectorAll('#schedule-editor [role=gridcell][data-row]').forEach(c => {
            (rows[+c.dataset.row] ||= [])[+c.dataset.col] = c.innerText.trim(); });
        return rows; }""")


def note(page):
    return page.locator("#schedule-note").inner_text()


def test_paint_a_schedule_and_run_it(page, tmp_path):
    page.get_by_text("Paint your own schedule").click()
    page.click("#schedule-from-planner")
    page.wait_for_function("document.querySelector('#schedule-note').innerText.includes('This schedule runs')",
                           timeout=60_000)
    planned = note(page)
    rows = cell_texts(page)
    assert len(rows) == 4 and len(rows[0]) == STEPS + 1   # groups x (name + steps)
    step = next(s for s in range(2, STEPS + 1) if rows[1][s] == "run")   # a computed cell of group 1
    page.click(f'#schedule-editor [role=gridcell][data-row="1"][data-col="{step}"]')
    # wait for the new note itself: while the edit is pending, Gradio puts a timer before the old one
    page.wait_for_function("document.querySelector('#schedule-note').innerText.includes('painted')", timeout=60_000)
    assert note(page) != planned and cell_texts(page)[1][step] == "K2"   # reused now, slope over 2 steps
    fraction = float(note(page).split("runs ")[1].split("%")[0]) / 100
    before = page.evaluate(HISTORY_ROWS)
    page.click("#run-schedule")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Done')", timeout=120_000)
    page.wait_for_function(f"{HISTORY_ROWS} === {before + 1}", timeout=20_000)
    assert "Your schedule" in page.locator("#metrics").inner_text()
    shown = page.locator("#metrics").inner_text().split("Compute speed-up")[1].split("×")[0]
    assert float(shown.strip()) == pytest.approx(1 / fraction, rel=0.02)   # the run computed what was painted
    assert ".json" in page.locator("#schedule-file").inner_text()   # the schedule to download

    bad = tmp_path / "schedule.json"
    bad.write_text('{"format": "layercache.schedule", "version": 1}')
    painted = cell_texts(page)
    with page.expect_file_chooser() as chooser:
        page.click("#schedule-upload")
    chooser.value.set_files(str(bad))
    page.wait_for_function("document.querySelector('#schedule-note').innerText.includes('Not changed')",
                           timeout=20_000)
    assert "missing the field" in note(page) and cell_texts(page) == painted


def test_a_lesson_button_sets_the_inputs(page):
    page.get_by_role("tab", name="Lesson").click()
    page.click("#lesson-2")   # push the budget until it breaks
    page.wait_for_function("document.querySelector('#budget input[type=number]').value === '0.35'", timeout=20_000)
    assert page.locator("#run").is_visible()   # back on the Compare tab
    assert page.locator("#steps input[type=number]").input_value() == "30"
    page.get_by_role("tab", name="Lesson").click()
    page.click("#lesson-5")   # explore
    page.wait_for_selector("#explore", state="visible", timeout=20_000)


def new_page(page, url, width, height):
    """A fresh visitor with this window size, in the browser the module already runs."""
    visitor = page.context.browser.new_context(viewport={"width": width, "height": height})
    fresh = visitor.new_page()
    fresh.goto(url)
    fresh.wait_for_selector("#run", timeout=60_000)
    return visitor, fresh


def test_layout_fits_a_projector_and_a_phone(page, url):
    visitor, wide = new_page(page, url, 1280, 800)
    try:
        for elem in ("model-box", "steps", "budget", "method", "groups", "max_k", "run", "uncached", "cached"):
            box = wide.locator(f"#{elem}").bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 800 and box["x"] + box["width"] <= 1280, \
                (elem, box)
        wide.wait_for_selector("#heat_computed .js-plotly-plot", timeout=30_000)   # the heatmaps drawn
        wide.screenshot(path=str(ASSETS / "app_1280x800.png"))
        for _ in range(80):   # every control is reachable by keyboard: Tab gets to Run
            wide.keyboard.press("Tab")
            if wide.evaluate("!!document.activeElement.closest('#run')"):
                break
        else:
            raise AssertionError("Tab never reached the Run button")
    finally:
        visitor.close()
    visitor, phone = new_page(page, url, 390, 844)
    try:
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390   # one column, nothing off the side
        for elem in ("steps", "budget", "run", "uncached", "cached", "heat_computed", "metrics", "pareto"):
            box = phone.locator(f"#{elem}").bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (elem, box)
        phone.screenshot(path=str(ASSETS / "app_390.png"), full_page=True)
    finally:
        visitor.close()
