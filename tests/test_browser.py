"""End to end in a real browser: Playwright drives Debian's Chromium against `streamlit run app/Home.py`.

Visits every page, scrubs a slice, moves threshold sliders and checks the numbers change, launches a tiny
training run from the Train page, watches it complete, evaluates it from Compare and finds it there.
Screenshots of every page go to test-artifacts/ (gitignored).

Needs Chromium from Debian (`apt-get install -y chromium`) and `pip install playwright`; never
`playwright install` (it downloads its own browser). Without them the test is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared home builder lives in test_app.py
from conftest import wait_for_streamlit  # noqa: E402
from test_app import REPO, build_app_home  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
INSTALL = "apt-get install -y chromium && pip install playwright"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason=f"browser tests need Debian's Chromium at {CHROMIUM} and the playwright package: {INSTALL}",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return build_app_home(Path(os.environ.get("UAD_TEST_APP_HOME") or tmp_path_factory.getbasetemp() / "uad-app-home"))


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    port = _free_port()
    env = dict(os.environ, UAD_HOME=str(home))
    env.pop("UAD_CACHE_DIR", None)
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.headless=true", "--server.address=127.0.0.1",
             f"--server.port={port}", "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_streamlit(port, proc, log_path)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def browser_page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            browser.close()


# -- helpers ---------------------------------------------------------------------------------------------------
IDLE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return app && app.getAttribute('data-test-connection-state') === 'CONNECTED'
      && app.getAttribute('data-test-script-state') === 'notRunning'
      && !document.querySelector('[data-testid="stSkeleton"]') && document.querySelector('h1') !== null;
}"""


def wait_idle(page, settle: float = 0.25) -> None:
    """Rendered = connected, script not running, no placeholder skeletons (checked twice, `settle` apart)."""
    time.sleep(settle)
    page.wait_for_function(IDLE)
    time.sleep(settle)
    page.wait_for_function(IDLE)


def goto(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    page.wait_for_function(f"() => [...document.querySelectorAll('h1')].some(h => h.innerText.includes({title!r}))")
    wait_idle(page)


def shot(page, name: str) -> None:
    """Screenshot of the whole page at the current width: the viewport is stretched to the main column's height first."""
    page.mouse.move(5, 5)  # no hover tooltip in the picture
    width, tall = page.viewport_size["width"], page.viewport_size["height"]
    height = page.evaluate("() => (document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight")
    page.set_viewport_size({"width": width, "height": max(1000, min(int(height) + 40, 8000))})
    time.sleep(0.6)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": width, "height": tall})


def slider(page, label: str):
    # Streamlit's slider is a react-aria slider around a visually hidden <input type="range">.
    return page.locator('[data-testid="stSlider"]', has_text=label).first.locator('input[type="range"]')


def metric_value(page, label: str) -> str:
    return page.locator('[data-testid="stMetric"]', has_text=label).first.locator('[data-testid="stMetricValue"]').inner_text()


def press(page, locator, key: str) -> float:
    """Press a key on a focused slider; returns seconds until its new value is drawn and the app is idle."""
    locator.focus()
    before = locator.input_value()
    t0 = time.perf_counter()
    locator.press(key)
    eventually(lambda: locator.input_value() != before)
    page.wait_for_function(IDLE)
    return time.perf_counter() - t0


def viewer_frame(page):
    """The viewer component's frame (one per page), once it has drawn."""
    frame = page.wait_for_selector('iframe[title*="uad_viewer"]').content_frame()
    frame.wait_for_selector('#root[data-ready="1"]')
    return frame


def viewer_state(frame) -> dict:
    return frame.evaluate("() => ({...document.getElementById('root').dataset})")


def viewer_step(frame, key: str = "ArrowRight") -> tuple[float, float, float]:
    """Press ``key`` on the viewer's axial slice control; (Playwright round trip, key to drawn, key to next
    frame) in ms, the last two measured inside the page from the key event's time stamp."""
    axial = frame.locator('input[data-plane="axial"]')
    axial.focus()
    before = viewer_state(frame)["drawnAt"]
    t0 = time.perf_counter()
    axial.press(key)
    frame.wait_for_function("prev => document.getElementById('root').dataset.drawnAt !== prev", arg=before)
    trip = (time.perf_counter() - t0) * 1000
    frame.wait_for_function("() => { const d = document.getElementById('root').dataset; return d.frameFor === d.drawnAt; }")
    state = viewer_state(frame)
    return trip, float(state["keyToDrawMs"]), float(state["keyToFrameMs"])


def column_profile(frame, plane: str = "axial", panel: int = 0) -> list[float]:
    """Mean brightness of each pixel column of one view's canvas (what is drawn, read back from the canvas)."""
    return frame.evaluate("""([plane, panel]) => {
      const c = document.querySelector(`canvas[data-plane="${plane}"][data-panel="${panel}"]`);
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const out = new Array(c.width).fill(0);
      for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) out[x] += d[(y * c.width + x) * 4];
      return out.map(v => v / c.height);
    }""", [plane, panel])


def letters(frame, plane: str = "axial") -> str:
    """The orientation letters of a view: left, right, top, bottom of the screen."""
    return "".join(frame.locator(f'.cell[data-plane="{plane}"][data-panel="0"] .ori.{side}').inner_text()
                   for side in ("l", "r", "t", "b"))


def eventually(condition, timeout: float = 30.0):
    """Poll ``condition`` until it returns something truthy (the app reruns asynchronously)."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value or time.time() > deadline:
            return value
        time.sleep(0.1)


# -- the journey -----------------------------------------------------------------------------------------------
def test_every_page_in_a_real_browser(browser_page, server, home):
    page = browser_page
    t0 = time.perf_counter()
    page.goto(server)
    wait_idle(page)
    first_render = time.perf_counter() - t0
    assert page.get_by_text("Runs and shipped checkpoints").is_visible()
    shot(page, "01-overview")

    goto(page, "Data")
    frame = viewer_frame(page)
    k = int(viewer_state(frame)["axial"])
    data_latency = viewer_step(frame)
    assert int(viewer_state(frame)["axial"]) == k + 1
    shot(page, "02-data")

    goto(page, "Explore")
    frame = viewer_frame(page)
    assert frame.locator("canvas[data-plane]").count() >= 12  # four panels (input, reconstruction, map, map vs truth) x three planes
    k = int(viewer_state(frame)["axial"])
    explore_latency = viewer_step(frame)
    assert int(viewer_state(frame)["axial"]) == k + 1
    dice = lambda: (metric_value(page, "Dice · whole volume"), metric_value(page, "Flagged pixels · volume"))  # noqa: E731
    before = dice()
    press(page, slider(page, "Pixel threshold"), "Home")
    assert eventually(lambda: dice() != before), before
    # The new threshold reaches the viewer (on its colour bar) without losing the slice shown.
    frame = viewer_frame(page)
    eventually(lambda: "0.0000" in frame.locator('[data-testid="threshold-label"]').inner_text())
    assert int(viewer_state(frame)["axial"]) == k + 1
    page.get_by_role("button", name=re.compile(r"^5% ·")).click()
    wait_idle(page)
    with page.expect_download() as download:
        page.get_by_role("button", name=re.compile("Download this volume")).click()
    nifti = Path(download.value.path()).read_bytes()
    assert nifti[:2] == b"\x1f\x8b" and len(nifti) > 1000  # gzipped NIfTI
    wait_idle(page)
    shot(page, "04-explore")

    goto(page, "Compare")
    panel = threshold_frame(page).locator(".panel").first
    point = lambda: (panel.locator("[data-metric='precision']").inner_text(), panel.locator("[data-metric='recall']").inner_text())  # noqa: E731
    before = point()
    panel.locator('input[data-role="slider"]').press("Home")  # lowest threshold: every slice flagged
    assert eventually(lambda: point() != before), before
    assert eventually(lambda: point()[1] == "1.000")
    shot(page, "05-compare")

    # Launch a tiny run from the Train page, watch it complete, find it in Compare.
    goto(page, "Train")
    before_runs = {p.name for p in (home / "runs").iterdir()}
    size = slider(page, "Image size")
    size.focus()
    size.press("Home")  # 64 px
    epochs = page.locator('[data-testid="stNumberInput"]', has_text="Epochs").locator("input")
    epochs.fill("1")
    shot(page, "03-train")
    page.get_by_role("button", name="Start training").click()
    wait_idle(page)
    new = []
    deadline = time.time() + 20
    while not new and time.time() < deadline:
        new = [p for p in (home / "runs").iterdir() if p.name not in before_runs]
        time.sleep(0.2)
    assert len(new) == 1, new
    run_dir = new[0]
    try:
        # Its card (the runs table above the cards names it too, in the grid's hidden accessible cells).
        page.locator('[data-testid="stMarkdownContainer"]', has_text=run_dir.name).first.wait_for()
        deadline = time.time() + 240
        state = None
        while time.time() < deadline:
            state = json.loads((run_dir / "status.json").read_text()).get("state")
            if state in ("completed", "failed", "cancelled"):
                break
            time.sleep(1)
        assert state == "completed", (run_dir / "stdout.log").read_text()[-2000:]
        # The runs panel polls the run folders every 2 s: the card's heading turns to "completed".
        heading = page.locator('[data-testid="stMarkdownContainer"]', has_text=run_dir.name).filter(has_text="completed")
        heading.first.wait_for(timeout=30_000)
        wait_idle(page)
        shot(page, "06-train-completed")

        goto(page, "Compare")
        page.get_by_text("not evaluated on the active dataset").first.click()
        row = page.get_by_role("button", name=re.compile(f"^Evaluate: {re.escape(run_dir.name)} on demo cohort"))
        row.first.click()
        out = run_dir / "eval" / "demo" / "test"
        deadline = time.time() + 240
        while time.time() < deadline and not (out / "metrics.json").is_file():
            time.sleep(1)
        assert (out / "metrics.json").is_file(), (out / "eval.log").read_text()[-2000:]
        page.locator('[data-testid="stMultiSelect"]', has_text=run_dir.name).first.wait_for(timeout=60_000)
        wait_idle(page)
        shot(page, "07-compare-with-new-run")
    finally:
        _stop(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\nfirst render {first_render:.2f} s; one slice step (Playwright round trip / key to drawn / key to next frame): "
          f"Data {'/'.join(f'{t:.0f}' for t in data_latency)} ms, Explore {'/'.join(f'{t:.0f}' for t in explore_latency)} ms")


def _stop(run_dir: Path) -> None:
    """Leave no process behind if the test failed half-way."""
    for path in (run_dir / "launch.json", run_dir / "eval" / "demo" / "test" / "launch.json"):
        try:
            pid = json.loads(path.read_text())["pid"]
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass


# -- Compare at a common laptop width -------------------------------------------------------------------------
def test_compare_numbers_are_not_cut_off_at_1500_px(browser_page, server, home):
    """Three runs' operating points side by side in a 1500-px window: every precision, recall, F1 and
    specificity is drawn in full (no "0.…"), and the HTML report downloads as one self-contained file."""
    page = browser_page
    extra = [home / "runs" / f"zz-wide-{i}" for i in (1, 2)]
    for dst in extra:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(home / "runs" / "fixture-ae", dst)
    try:
        page.set_viewport_size({"width": 1500, "height": 1000})
        page.goto(server)
        wait_idle(page)
        goto(page, "Compare")
        page.locator('[data-testid="stMultiSelect"]', has_text="zz-wide-1").first.wait_for()
        frame = threshold_frame(page)
        eventually(lambda: frame.locator(".panel").count() == 3)
        values = frame.locator(".panel [data-metric]")
        assert values.count() == 12  # 3 runs x precision, recall, F1, specificity
        for i in range(values.count()):
            v = values.nth(i)
            text = v.inner_text().strip()
            assert re.fullmatch(r"\d\.\d{3}|–", text), text
            # Drawn in full: the text is not wider than its box, nor its box than its panel.
            clipped = v.evaluate("e => e.scrollWidth > e.clientWidth + 1 || e.getBoundingClientRect().right > "
                                 "e.closest('.panel').getBoundingClientRect().right")
            assert not clipped, f"metric value {text!r} is cut off at 1500 px"
        page.set_viewport_size({"width": 1500, "height": 4000})
        time.sleep(0.5)
        shot(page, "08-compare-1500px")
        with page.expect_download(timeout=120_000) as download:
            page.get_by_role("button", name="Report: fixture-ae").click()
        text = Path(download.value.path()).read_text()
        assert text.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in text
        assert not re.search(r"<script[^>]+src=[\"']?https?:", text)
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})
        for dst in extra:
            shutil.rmtree(dst, ignore_errors=True)


# -- Overview and Train at common laptop widths ---------------------------------------------------------------------
@pytest.mark.parametrize("width", [1280, 1500])
def test_overview_and_train_are_not_cut_off(browser_page, server, home, width):
    """Issue #20 defects 4 and 7: at 1280 and 1500 px the Overview table needs no sideways scrolling (its
    'evaluated on' column and every number in view, the pinned run names whole) and Train's dataset path is one
    unbroken line."""
    page = browser_page
    try:
        page.set_viewport_size({"width": width, "height": 1000})
        page.goto(server)
        wait_idle(page)
        grid = page.locator('[data-testid="stDataFrame"]').first
        grid.wait_for()
        eventually(lambda: grid.locator("[role=columnheader]").count() >= 7)  # the grid's accessible headers are built
        fit = grid.evaluate("""d => { const s = d.querySelector('.dvn-scroller');
            return {scroll: s.scrollWidth, client: s.clientWidth,
                    headers: [...d.querySelectorAll('[role=columnheader]')].map(e => e.textContent)}; }""")
        assert fit["scroll"] <= fit["client"] + 1, fit  # every column in view
        assert {"run", "status", "evaluated on", "Dice @5 % FPR"} <= set(fit["headers"]), fit
        # The pinned run column (app/views/overview.py: 7 px a character + 24, 140-220 px) holds the longest name
        # as the grid draws it (its font, its 8-px cell padding each side).
        names = [p.name for p in (home / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")] + ["autoencoder"]
        font = grid.evaluate("d => { const c = d.querySelector('canvas'); return c ? getComputedStyle(c).fontFamily : ''; }")
        drawn = page.evaluate("([names, family]) => { const c = document.createElement('canvas').getContext('2d'); "
                              "c.font = `14px ${family || 'sans-serif'}`; return Math.max(...names.map(n => c.measureText(n).width)); }",
                              [names, font])
        longest = max(len(n) for n in names)
        assert drawn + 16 <= min(max(7 * longest + 24, 140), 220), (drawn, longest)
        shot(page, f"11-overview-{width}px")

        goto(page, "Train")
        path = page.locator('[data-testid="stCode"]', has_text=str(home / "data" / "demo")).first
        lines = path.evaluate("e => { const r = e.querySelector('code').getBoundingClientRect(); "
                              "return r.height / parseFloat(getComputedStyle(e.querySelector('code')).lineHeight); }")
        assert lines < 1.5, f"the dataset path wraps ({lines:.1f} lines) at {width} px"
        shot(page, f"12-train-{width}px")
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})


# -- Compare's operating points, computed in the browser ------------------------------------------------------------
REAL_DEV = REPO.parent / "shared" / "data" / "real_dev"


def threshold_frame(page):
    """Compare's threshold component frame, once it has drawn."""
    frame = page.wait_for_selector('iframe[title*="uad_thresholds"]').content_frame()
    frame.wait_for_selector('#root[data-ready="1"]')
    return frame


def panel_state(frame, run: str) -> dict:
    """What a model's panel shows, at full precision (its data attributes): threshold, counts and rates."""
    return frame.evaluate("id => ({...document.querySelector(`.panel[data-model='${id}']`).dataset})", run)


def assert_same_as_uad(state: dict, labels: np.ndarray, scores: np.ndarray) -> None:
    """The browser's numbers at its threshold are uad's (uad.evaluation.metrics.operating_point): counts exactly,
    rates to 1e-9, undefined rates undefined in both."""
    import math

    from uad.evaluation import metrics

    want = metrics.operating_point(labels, scores, float(state["threshold"]))
    for k in ("tp", "fp", "fn", "tn"):
        assert int(state[k]) == want[k], (k, state, want)
    for k in ("precision", "recall", "f1", "specificity", "fpr", "accuracy"):
        got = float(state[k])
        assert (math.isnan(got) and math.isnan(want[k])) or abs(got - want[k]) <= 1e-9, (k, state, want)


def thresholds_match_uad(page, frame, run: str, slices_csv: Path) -> int:
    """Move one model's threshold every way the panel offers (keys, typed values between, on, below and above
    the scores, presets) and compare the browser's numbers with uad's each time; returns how many were checked."""
    import pandas as pd

    slices = pd.read_csv(slices_csv)
    slices = slices[pd.to_numeric(slices.label, errors="coerce").notna()]
    labels, scores = slices.label.to_numpy(int), slices.score.to_numpy(np.float64)
    panel = frame.locator(f".panel[data-model='{run}']")
    rng, box = panel.locator('input[data-role="slider"]'), panel.locator('input[data-role="value"]')
    checked = 0

    def check():
        nonlocal checked
        assert_same_as_uad(panel_state(frame, run), labels, scores)
        checked += 1

    check()  # where it starts (Youden's J)
    for key in ["Home", "ArrowRight", "ArrowRight", "PageUp", "End", "ArrowLeft", "PageDown"]:
        before = panel_state(frame, run)["threshold"]
        rng.press(key)
        eventually(lambda: panel_state(frame, run)["threshold"] != before or key in ("Home", "End"))
        check()
    uniq = np.unique(scores)
    for value in [uniq[len(uniq) // 3], (uniq[len(uniq) // 2] + uniq[len(uniq) // 2 + 1]) / 2, uniq.min() - 1,
                  uniq.max() + 1, uniq.max()]:
        box.fill(repr(float(value)))
        box.press("Enter")
        eventually(lambda: float(panel_state(frame, run)["threshold"]) == float(value))
        check()
    state = panel_state(frame, run)
    assert float(state["threshold"]) == uniq.max() and int(state["tp"]) + int(state["fp"]) >= 1
    for preset in panel.locator(".presets button").all():
        preset.click()
        check()
    return checked


def test_compare_thresholds_move_in_the_browser_as_uad_counts_them(browser_page, server, home):
    """Task 1 (issue #16 item 2): each model's threshold, numbers, confusion matrix, operating-point dots and
    distribution line are computed and drawn in the browser, equal to uad's at every threshold, and moving a
    threshold sends nothing to the server (no rerun)."""
    context = browser_page.context.browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()  # a fresh page: its websocket is watched from the start
    page.set_default_timeout(60_000)
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(time.time())))
    try:
        page.set_viewport_size({"width": 1500, "height": 1000})
        page.goto(server)
        wait_idle(page)
        goto(page, "Compare")
        frame = threshold_frame(page)
        drawn = frame.evaluate("() => document.getElementById('root').dataset.drawnAt")
        quiet_from = len(sent)
        checked = thresholds_match_uad(page, frame, "fixture-ae", home / "runs" / "fixture-ae" / "eval" / "demo" / "test" / "slices.csv")
        assert checked >= 14
        time.sleep(0.5)
        assert len(sent) == quiet_from, "a threshold move sent a message to the server (a rerun)"
        assert frame.evaluate("() => document.getElementById('root').dataset.drawnAt") != drawn  # the dots moved
        # The recall shown (3 decimals) is the one counted; the dot is drawn over the curve in the model's colour.
        state = panel_state(frame, "fixture-ae")
        shown = frame.locator(".panel[data-model='fixture-ae'] [data-metric='recall']").inner_text()
        assert shown == ("–" if state["recall"] == "NaN" else f"{float(state['recall']):.3f}")
        # A click on a point of a model's ROC curve puts its threshold there (the point's threshold, exactly).
        target = frame.evaluate("""() => { const ch = S.charts.roc, line = ch.curve.lines.find(l => l.method === 0);
            const i = line.thresholds.findIndex((t, j) => Number.isFinite(t) && j > line.x.length / 3);
            const r = ch.over.getBoundingClientRect();
            return {x: r.left + ch.tx.X(line.x[i]), y: r.top + ch.tx.Y(line.y[i]), threshold: line.thresholds[i],
                    id: S.models[0].info.id}; }""")
        box = page.locator('iframe[title*="uad_thresholds"]').bounding_box()
        page.mouse.click(box["x"] + target["x"], box["y"] + target["y"])
        eventually(lambda: float(panel_state(frame, target["id"])["threshold"]) == target["threshold"])
        assert float(panel_state(frame, target["id"])["threshold"]) == target["threshold"]
        state = panel_state(frame, "fixture-ae")
        # The threshold survives a page change (kept in the tab, not on the server).
        goto(page, "Train")
        goto(page, "Compare")
        assert panel_state(threshold_frame(page), "fixture-ae")["threshold"] == state["threshold"]
        # A chart downloads titled, named after its data and runs.
        with page.expect_download() as download:
            threshold_frame(page).locator('[data-chart="roc"] button').click()
        assert download.value.suggested_filename.startswith("slice-level-ROC_demo-cohort-test-split_")
        assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shot(page, "09-compare-thresholds")
    finally:
        context.close()


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason=f"real-data check needs {REAL_DEV}")
def test_compare_thresholds_match_uad_on_a_real_evaluation(browser_page, server, home):
    """The same check on real scans: the shipped real-data autoencoder evaluated on two real glioma patients
    (its validation patients in ../shared/data/real_dev), chosen under "Evaluated on"."""
    import subprocess

    from uad.data import identity

    ref = identity.dataset_ref(REAL_DEV)
    out = home / "runs" / "shipped-eval" / "real" / "autoencoder" / "eval" / ref.id / "val"
    if not (out / "metrics.json").is_file():
        env = dict(os.environ, UAD_HOME=str(home))
        env.pop("UAD_CACHE_DIR", None)
        proc = subprocess.run([sys.executable, "-m", "uad", "evaluate", "--run", str(REPO / "checkpoints" / "real" / "autoencoder"),
                               "--data", str(REAL_DEV), "--split", "val", "--bootstrap", "20", "--out", str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    page = browser_page
    page.set_viewport_size({"width": 1500, "height": 1000})
    page.goto(server)
    wait_idle(page)
    goto(page, "Compare")
    page.locator('[data-testid="stSelectbox"]', has_text="Evaluated on").first.click()
    page.get_by_role("option", name=re.compile(re.escape(ref.label))).first.click()
    wait_idle(page)
    frame = threshold_frame(page)
    eventually(lambda: frame.locator(".panel[data-model='real/autoencoder']").count() == 1)
    assert thresholds_match_uad(page, frame, "real/autoencoder", out / "slices.csv") >= 14
    shot(page, "10-compare-thresholds-real")


def test_viewer_orientation_scrubbing_and_folder_switch(browser_page, server, home, tmp_path):
    """The viewer in Chromium: orientation letters, radiological by default and stated; the switch mirrors
    the image; a marker on the patient's left is drawn on the screen's right in radiological convention;
    slice steps are drawn in the browser within 150 ms; after a folder switch the case box and the viewer
    name the same case (issue 11 #1)."""
    from test_viewer import marker_case

    page = browser_page
    page.goto(server)
    wait_idle(page)
    goto(page, "Data")
    frame = viewer_frame(page)
    assert letters(frame, "axial") == "RLAP" and letters(frame, "coronal") == "RLSI" and letters(frame, "sagittal") == "APSI"
    assert "Radiological convention: the patient's right is on the screen's left" in frame.locator('[data-testid="convention"]').inner_text()
    steps = [viewer_step(frame) for _ in range(8)] + [viewer_step(frame, "ArrowLeft") for _ in range(4)]
    to_frame = sorted(s[2] for s in steps)[len(steps) // 2]
    print(f"\nviewer slice step, key to next frame: median {to_frame:.0f} ms over {len(steps)} steps")
    assert to_frame < 150, steps

    before = column_profile(frame)
    frame.locator('select[aria-label="Display convention"]').select_option("neurological")
    frame.wait_for_function("() => document.getElementById('root').dataset.convention === 'neurological'")
    after = column_profile(frame)
    assert letters(frame, "axial") == "LRAP" and letters(frame, "sagittal") == "APSI"
    assert "Neurological convention" in frame.locator('[data-testid="convention"]').inner_text()
    mirrored, same = np.corrcoef(after, before[::-1])[0, 1], np.corrcoef(after, before)[0, 1]
    assert mirrored > 0.95 and mirrored > same, (mirrored, same)

    # A folder of one case with a bright blob on the patient's left (stored LPS, as BraTS files are).
    folder = tmp_path / "marker"
    marker_case(folder)
    box = page.locator('[data-testid="stSelectbox"]', has_text="Case")

    def shown() -> str:
        """What the case box shows: its text and its input's value (where Streamlit draws the choice)."""
        return " | ".join(box.evaluate_all(
            "es => es.map(e => e.innerText + ' ' + [...e.querySelectorAll('input')].map(i => i.value + ' ' + (i.getAttribute('aria-label') || '')).join(' '))"))

    assert "BraTS2021_00000" in shown(), shown()
    page.locator('[data-testid="stTextInput"] input').fill(str(folder))
    page.get_by_role("button", name="Use folder").click()
    eventually(lambda: "BraTS2021_00077" in shown())
    wait_idle(page)
    frame = viewer_frame(page)
    eventually(lambda: viewer_state(frame).get("caseId") == "BraTS2021_00077")
    assert box.count() == 1 and "BraTS2021_00077" in shown() and "BraTS2021_00000" not in shown(), shown()
    assert viewer_state(frame)["caseId"] == "BraTS2021_00077"
    shot(page, "08-data-marker")

    def bright_side() -> str:
        profile = np.array(column_profile(frame))
        cols = np.flatnonzero(profile >= profile.max() * 0.9)
        return "right" if cols.mean() > len(profile) / 2 else "left"

    assert viewer_state(frame)["convention"] == "radiological"  # a new case opens in the default convention
    assert bright_side() == "right"  # patient left on the screen's right
    frame.locator('select[aria-label="Display convention"]').select_option("neurological")
    frame.wait_for_function("() => document.getElementById('root').dataset.convention === 'neurological'")
    assert bright_side() == "left"
    page.get_by_role("button", name="Use demo").click()
    eventually(lambda: "BraTS2021_00000" in shown())
    wait_idle(page)
    assert viewer_state(viewer_frame(page))["caseId"] == "BraTS2021_00000" and "BraTS2021_00077" not in shown()


# -- labels are text (issue #17 E) --------------------------------------------------------------------------------
def _pick(page, label: str, text: str) -> None:
    """Choose the option holding ``text`` in the select box or multiselect labelled ``label``."""
    box = page.locator('[data-testid="stSelectbox"], [data-testid="stMultiSelect"]', has_text=label).first
    box.locator("input").first.click()
    box.locator("input").first.fill(text)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    wait_idle(page)


def test_hostile_labels_never_reach_the_browser_as_markup(browser_page, server, home):
    """A run whose model name (config.json), name, tags and note (meta.json) are HTML and Markdown pointing at
    a local server: on every page the browser fetches nothing from it and draws no link or image to it, and
    the labels are there as text."""
    import http.server
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import test_app

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *args):
            pass

    trap = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{trap.server_address[1]}/"
    test_app.HOSTILE, saved = host, test_app.HOSTILE
    run = test_app.hostile_run(home, "zz-hostile")
    test_app.HOSTILE = saved
    page = browser_page
    found_markup = """host => [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(
        a => (a.name === 'href' || a.name === 'src' || a.name === 'xlink:href') && a.value.startsWith(host)))
        .map(e => e.outerHTML.slice(0, 300))"""
    try:
        page.goto(server)
        wait_idle(page)
        for title, act in (("Overview", None), ("Train", None),
                           ("Explore", lambda: _pick(page, "Run or shipped checkpoint", "zz-hostile")),
                           ("Compare", lambda: _pick(page, "Runs to compare", "zz-hostile"))):
            if title != "Overview":  # the start page, whose title is the app's
                goto(page, title)
            if act is not None:
                act()
            time.sleep(1.0)  # give any image a chance to be fetched
            assert page.evaluate(found_markup, host) == [], title
            assert hits == [], (title, hits)
            shot(page, f"hostile-{title.lower()}")
        goto(page, "Train")
        assert page.get_by_text("[Sign in again]", exact=False).count() >= 1  # shown, as text
        assert page.get_by_role("link", name="Sign in again").count() == 0
    finally:
        trap.shutdown()
        shutil.rmtree(run, ignore_errors=True)
