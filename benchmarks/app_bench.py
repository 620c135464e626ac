"""App benchmark: first page render and the viewer's latencies, in a real browser on the demo cohort (and, when
present, the real development set).

    python benchmarks/app_bench.py [--moves 20] [--real ../shared/data/real_dev]

Starts ``streamlit run app/Home.py`` on a free port (the project's own data, runs and shipped checkpoints;
the demo cohort is generated first if missing), drives Debian's Chromium with Playwright, and prints:

* first render: from opening the URL until the Overview page is drawn and idle, for the first browser
  session on a freshly started server (cold: the script's imports run now) and for a second session;
* per slice step in the viewer on Data and Explore (→ on its axial slice control), with the mouse resting on a
  view so the readout under the cursor follows every step: key press to drawn (the key event's time stamp to
  the end of the component's drawing, measured in the page), key press to the next animation frame (when the
  browser paints it: what the 150 ms goal is about), and the Playwright round trip;
* Explore with four maps (the main run and three beside it): per pixel-threshold move (→ on the viewer's
  threshold slider; the browser thresholds the float32 map and recomputes TP/FP/FN, Dice and counts) key press
  to drawn and to the next frame, alternating with slice steps in the same run, and how many times the server
  ran the page meanwhile (``UAD_APP_TIMINGS`` lines: none is expected);
* Data opening a folder of real cases (``--real``): from "Use folder" until the first case is drawn, on a
  server that has not read that case before, and a slice step there.
* per slice-threshold move on Compare (→ on the first model's threshold, computed and drawn in the browser):
  key to drawn and key to next frame (measured in the page), the Playwright round trip, and how many server
  reruns the moves caused (the server log's page timings: the goal is none);
* the Train page: the server's time to draw it (every run's card, table and charts), and a change of the loss
  smoothing (a page rerun) until the charts are drawn again.

Explore's first visit (against an empty maps cache of the benchmark's own, ``UAD_MAPS_CACHE_DIR``; the app
prefetches its opening run and case in the background once its first page is drawn, ``uad.jobs.prefetch``) is
timed from the click until the viewer has drawn (by the viewer's clock, and when Playwright's polling saw it),
after a visit to Data (a revisit: maps in the server's memory), for another case picked in the case box (its maps
computed on the visit), and again after the server is restarted (a fresh process that has only the maps and the
preprocessed case on disk: read, not computed).
Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(os.environ.get("BENCH_REPO") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import free_port, stop_streamlit
from test_browser import (  # noqa: E402
    CHROMIUM,
    IDLE,
    eventually,
    goto,
    slider,
    threshold_frame,
    viewer_frame,
    viewer_state,
    wait_idle,
)

REAL_DEV = REPO.parent / "shared" / "data" / "real_dev"

TIMING = re.compile(r"\[uad-app\] (?P<name>[\w ]+): (?P<ms>\d+) ms")




def start_server(log_path: Path, maps_dir: Path) -> tuple[subprocess.Popen, str]:
    from uad.scoring.cache import DIR_ENV

    port = free_port()
    env = dict(os.environ, UAD_APP_TIMINGS="1", **{DIR_ENV: str(maps_dir)})
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/Home.py", f"--server.port={port}"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def server_timings(log_path: Path, name: str) -> list[float]:
    return [float(m["ms"]) for m in TIMING.finditer(log_path.read_text()) if m["name"] == name]


def first_render(browser, url: str) -> float:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    t0 = time.perf_counter()
    page.goto(url)
    wait_idle(page, settle=0.0)
    seconds = time.perf_counter() - t0
    page.close()
    return seconds


def key_to_draw(frame, control, key: str) -> tuple[float, float, float]:
    """Press ``key`` on a control of the viewer; (Playwright round trip, key to drawn, key to next frame) in ms,
    the last two measured inside the page from the key event's time stamp."""
    control.focus()
    before = viewer_state(frame)["drawnAt"]
    t0 = time.perf_counter()
    control.press(key)
    frame.wait_for_function("prev => document.getElementById('root').dataset.drawnAt !== prev", arg=before)
    trip = (time.perf_counter() - t0) * 1000
    frame.wait_for_function("() => { const d = document.getElementById('root').dataset; return d.frameFor === d.drawnAt; }")
    state = viewer_state(frame)
    return trip, float(state["keyToDrawMs"]), float(state["keyToFrameMs"])


def rest_mouse_on_a_view(page, frame) -> None:
    """The mouse over the first panel's axial view: the readout under the cursor is live for every step."""
    cell = frame.locator('.cell[data-plane="axial"][data-panel="0"]')
    cell.scroll_into_view_if_needed()
    box = cell.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.5)
    frame.wait_for_function("() => !!document.getElementById('root').dataset.hover")


def scrub(page, moves: int) -> tuple[list[float], list[float], list[float]]:
    """Step the viewer's axial slice ``moves`` times (→, then ← for the second half, staying in range), the
    mouse resting on a view; (Playwright round trip, key to drawn, key to next frame) in ms per step."""
    frame = viewer_frame(page)
    rest_mouse_on_a_view(page, frame)
    axial = frame.locator('input[data-plane="axial"]')
    steps = [key_to_draw(frame, axial, "ArrowRight" if i < moves // 2 else "ArrowLeft") for i in range(moves)]
    assert frame.evaluate("() => JSON.parse(document.getElementById('root').dataset.hover).grid[0]") == int(viewer_state(frame)["axial"])
    return [s[0] for s in steps], [s[1] for s in steps], [s[2] for s in steps]


def add_beside(page, names: list[str]) -> None:
    """Choose runs in Explore's "Heatmaps beside it"."""
    box = page.locator('[data-testid="stMultiSelect"]', has_text="Heatmaps beside it").first
    for name in names:
        field = box.locator("input").first
        field.click()
        field.fill(name)
        page.get_by_role("option", name=re.compile(f"^{re.escape(name)} ")).first.click()
        field.press("Escape")
        wait_idle(page)


def re_add_beside(page, name: str, panels: int) -> float:
    """Take ``name`` out of Explore's "Heatmaps beside it" and choose it again (its maps were computed before: the
    server holds them): seconds from choosing it until the viewer has drawn its panel again (the viewer's clock)."""
    box = page.locator('[data-testid="stMultiSelect"]', has_text="Heatmaps beside it").first
    field = box.locator("input").first
    field.click()
    field.press("Backspace")  # removes the last run chosen
    field.press("Escape")
    wait_idle(page)
    viewer_frame(page).wait_for_function("n => document.querySelectorAll('.head').length < n", arg=panels)
    field.click()
    field.fill(name)
    option = page.get_by_role("option", name=re.compile(f"^{re.escape(name)} ")).first
    option.wait_for()
    t0 = time.time()
    option.click()
    frame = viewer_frame(page)
    frame.wait_for_function("n => document.querySelectorAll('.head').length >= n", arg=panels, timeout=300_000)
    drawn = float(frame.evaluate("() => document.getElementById('root').dataset.renderEnd")) / 1000 - t0
    field.press("Escape")
    wait_idle(page)
    return drawn


def threshold_and_slice_moves(page, log_path: Path, moves: int) -> dict[str, list[float]]:
    """Alternate threshold moves (→ then ← on the viewer's threshold slider) and slice steps; key to drawn and
    to the next frame for each, and the page runs the server logged meanwhile."""
    frame = viewer_frame(page)
    rest_mouse_on_a_view(page, frame)
    threshold = frame.locator('input[data-testid="threshold"]')
    axial = frame.locator('input[data-plane="axial"]')
    runs_before = len(server_timings(log_path, "page Explore"))
    out: dict[str, list[float]] = {"thr_draw": [], "thr_frame": [], "step_draw": [], "step_frame": []}
    for i in range(moves):
        key = "ArrowRight" if i < moves // 2 else "ArrowLeft"
        _, drawn, painted = key_to_draw(frame, threshold, key)
        out["thr_draw"].append(drawn)
        out["thr_frame"].append(painted)
        _, drawn, painted = key_to_draw(frame, axial, key)
        out["step_draw"].append(drawn)
        out["step_frame"].append(painted)
    time.sleep(1.0)  # a rerun the moves caused would be logged by now
    out["reruns"] = [float(len(server_timings(log_path, "page Explore")) - runs_before)]
    return out


WATCH_NEW_VIEWER = """old => {
  // Wall-clock times (ms since the epoch) the new case's viewer reports: its script loaded, volumes received and
  // inflated, drawing done. The frame that drew the previous case may be replaced meanwhile.
  window.__viewerTimes = null;
  const poll = () => {
    const f = document.querySelector('iframe[title*="uad_viewer"]');
    const r = f && f.contentDocument && f.contentDocument.getElementById('root');
    if (r && r.dataset.ready === '1' && r.dataset.caseId && r.dataset.caseId !== old && r.dataset.renderEnd) {
      const d = r.dataset;
      window.__viewerTimes = { loaded: +d.loadedAt, start: +d.renderStart, inflated: +d.inflatedAt, drawn: +d.renderEnd };
      return;
    }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
}"""


def open_real_folder(page, folder: Path, log_path: Path) -> dict[str, float]:
    """Data → "Use folder" on ``folder``: seconds from the click until its first case is drawn (the viewer's own
    clock), the server's time for that run of the page, and the browser's time to unpack and draw the volumes."""
    goto(page, "Data")
    frame = viewer_frame(page)
    page.evaluate(WATCH_NEW_VIEWER, viewer_state(frame)["caseId"])
    page.locator('[data-testid="stTextInput"] input').fill(str(folder))
    before = len(server_timings(log_path, "page Data"))
    t0 = time.time()
    page.get_by_role("button", name="Use folder").click()
    page.wait_for_function("() => window.__viewerTimes !== null")
    t = page.evaluate("() => window.__viewerTimes")
    wait_idle(page, settle=0.1)
    server = server_timings(log_path, "page Data")[before:]
    return {"drawn": t["drawn"] / 1000 - t0, "server": server[0] / 1000 if server else float("nan"),
            "unpack": (t["inflated"] - t["start"]) / 1000, "draw": (t["drawn"] - t["inflated"]) / 1000}


def compare_threshold_moves(page, log_path: Path, moves: int) -> tuple[list[float], list[float], list[float], int]:
    """Press → (then ←) on Compare's first slice-threshold slider ``moves`` times; (key to drawn, key to next frame,
    Playwright round trip) in ms per move, and the server reruns the moves caused (none expected)."""
    goto(page, "Compare")
    frame = threshold_frame(page)
    wait_idle(page)
    time.sleep(0.5)
    reruns_before = len(server_timings(log_path, "page Compare"))
    rng = frame.locator('.panel input[data-role="slider"]').first
    rng.focus()
    rng.press("Home")  # from the lowest threshold, so → always moves
    frame.wait_for_function("() => document.getElementById('root').dataset.frameFor === document.getElementById('root').dataset.drawnAt")
    drawn_ms, frame_ms, trips = [], [], []
    for i in range(moves):
        before = frame.evaluate("() => document.getElementById('root').dataset.drawnAt")
        t0 = time.perf_counter()
        rng.press("ArrowRight" if i < (moves + 1) // 2 else "ArrowLeft")  # from Home: never a left press past it
        frame.wait_for_function("prev => document.getElementById('root').dataset.drawnAt !== prev", arg=before)
        trips.append((time.perf_counter() - t0) * 1000)
        frame.wait_for_function("() => { const d = document.getElementById('root').dataset; return d.frameFor === d.drawnAt; }")
        state = frame.evaluate("() => ({...document.getElementById('root').dataset})")
        drawn_ms.append(float(state["keyToDrawMs"]))
        frame_ms.append(float(state["keyToFrameMs"]))
    time.sleep(1.0)  # a rerun, had there been one, would have been logged by now
    return drawn_ms, frame_ms, trips, len(server_timings(log_path, "page Compare")) - reruns_before


def train_page(page, log_path: Path, changes: int) -> tuple[list[float], list[float], bool]:
    """Open Train (server ms per page run), then change the loss smoothing ``changes`` times (round trip until the
    page is idle again, ms); the last flag says whether any run's charts were on the page."""
    before = len(server_timings(log_path, "page Train"))
    goto(page, "Train")
    time.sleep(0.5)
    has_charts = page.locator('[data-testid="stPlotlyChart"]').count() > 0
    s = slider(page, "Loss smoothing")
    s.focus()
    trips = []
    for i in range(changes):
        value = s.input_value()
        t0 = time.perf_counter()
        s.press("ArrowLeft" if i % 2 else "ArrowRight")
        eventually(lambda: s.input_value() != value)
        time.sleep(0.05)  # the rerun has started by then (it reads the new value at once)
        page.wait_for_function(IDLE)
        trips.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.3)
    return server_timings(log_path, "page Train")[before:], trips, has_charts


def _explore_viewer(page, panels: int | None = None):
    """Explore's viewer frame once it has drawn (with ``panels`` heatmap panels, when given); None if not yet.
    A page being left may still show its own viewer for a moment: Explore's is the one with anomaly maps."""
    frame = page.wait_for_selector('iframe[title*="uad_viewer"]').content_frame()
    if frame is None or frame.locator('#root[data-ready="1"]').count() == 0:
        return None
    heads = frame.locator('.head', has_text="Anomaly map").count()
    return frame if heads and (panels is None or heads >= panels) else None


def _wait_for(condition, what: str, timeout: float = 300.0):
    deadline = time.time() + timeout
    while (found := condition()) is None:
        if time.time() > deadline:
            raise SystemExit(f"{what} never happened")
        time.sleep(0.05)
    return found


def open_explore(page) -> tuple[float, float]:
    """Seconds from clicking Explore in the navigation until its viewer has drawn the default run on the case: by
    the viewer's own clock (the end of its drawing, as ``open_real_folder`` reads it), and until Playwright's
    polling saw it (each poll is several round trips to the browser: 0.4-0.6 s later on the 2-core machine)."""
    t0, p0 = time.time(), time.perf_counter()
    page.locator('[data-testid="stSidebarNav"] a', has_text="Explore").first.click()
    page.wait_for_function("() => [...document.querySelectorAll('h1')].some(h => h.innerText.includes('Explore'))")
    frame = _wait_for(lambda: _explore_viewer(page), "Explore's viewer")
    seen = time.perf_counter() - p0
    drawn = float(frame.evaluate("() => document.getElementById('root').dataset.renderEnd")) / 1000 - t0
    wait_idle(page)
    return drawn, seen


def open_another_case(page) -> tuple[float, str]:
    """Explore: another labelled case picked in its case box, one no page has opened (its maps computed on the
    visit, not prefetched): seconds from the click on it until the viewer has drawn it (the viewer's clock)."""
    old = viewer_state(viewer_frame(page))["caseId"]
    page.evaluate(WATCH_NEW_VIEWER, old)
    page.locator('[data-testid="stSelectbox"]', has_text="Case").first.click()
    names = [t.strip() for t in page.get_by_role("option").all_inner_texts()]
    target = [n for n in names if n != old and "unlabelled" not in n][-1]
    t0 = time.time()
    page.get_by_role("option", name=target, exact=True).first.click()
    page.wait_for_function("() => window.__viewerTimes !== null", timeout=300_000)
    t = page.evaluate("() => window.__viewerTimes")
    wait_idle(page)
    return t["drawn"] / 1000 - t0, target


def warm_session(browser, url: str):
    """A browser page on the app's Overview, the server's background warm-up (torch import) given time to finish."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(300_000)
    page.goto(url)
    wait_idle(page)
    time.sleep(3)
    return page


def row(name: str, values: list[float], unit: str = "ms") -> str:
    if not values:
        return f"| {name} | – | – | – |"
    return (f"| {name} | {statistics.median(values):.0f} {unit} | {max(values):.0f} {unit} | {len(values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--real", type=Path, default=REAL_DEV if REAL_DEV.is_dir() else None,
                        help=f"a folder of real BraTS cases for the Data rows (default {REAL_DEV} when present)")
    parser.add_argument("--beside", nargs="*", default=["vae", "vit", "ganomaly"],
                        help="runs shown beside Explore's main run for the four-map rows (default: shipped vae, vit, ganomaly)")
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("needs: pip install playwright (and apt-get install -y chromium)") from None
    if not CHROMIUM.exists():
        raise SystemExit(f"needs Debian's Chromium at {CHROMIUM}: apt-get install -y chromium")

    from uad.data.demo import ensure_demo

    ensure_demo()  # generating the demo cohort is not part of a render
    work = Path(tempfile.mkdtemp(prefix="uad-app-bench-"))
    log_path, maps_dir = work / "server.log", work / "maps"
    proc, url = start_server(log_path, maps_dir)
    real = None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            cold = first_render(browser, url)
            time.sleep(3)  # let the background warm-up (torch import) finish, as a user reading the page would
            warm = first_render(browser, url)

            page = warm_session(browser, url)
            goto(page, "Data")
            data = scrub(page, args.moves)
            explore_first = open_explore(page)
            explore = scrub(page, args.moves)
            goto(page, "Data")
            explore_revisit = open_explore(page)
            another = open_another_case(page)
            t0 = time.perf_counter()
            add_beside(page, args.beside)
            frame = viewer_frame(page)
            frame.wait_for_function("n => document.querySelectorAll('.head').length >= n", arg=len(args.beside) + 4)
            beside_first = time.perf_counter() - t0
            four = threshold_and_slice_moves(page, log_path, args.moves)
            re_added = re_add_beside(page, args.beside[-1], len(args.beside) + 4) if args.beside else None
            cmp_drawn, cmp_frame, cmp_trip, cmp_reruns = compare_threshold_moves(page, log_path, args.moves)
            train_server, train_trip, train_charts = train_page(page, log_path, max(args.moves // 4, 3))
            # Last: opening the real folder makes it the active dataset.
            if args.real is not None:
                page.set_viewport_size({"width": 1280, "height": 1000})
                opened = open_real_folder(page, args.real.resolve(), log_path)
                real = (opened, scrub(page, args.moves))
                goto(page, "Data")  # back to the demo cohort, whose maps the restarted app should find on disk
                page.get_by_role("button", name="Use demo").click()
                wait_idle(page)
            browser.close()

            # A restarted app: only the maps cache on disk remembers the maps.
            stop_streamlit(proc, grace=30)
            proc, url = start_server(work / "server-restarted.log", maps_dir)
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = warm_session(browser, url)
            explore_again = open_explore(page)
            browser.close()
    finally:
        stop_streamlit(proc, grace=30)

    print("| measure | median | max | n |\n|---|---:|---:|---:|")
    print(f"| first render, fresh server | {cold:.2f} s | | 1 |")
    print(f"| first render, second session | {warm:.2f} s | | 1 |")
    for name, (trip, drawn, frame) in (("Data", data), ("Explore", explore)):
        print(row(f"{name}: slice step with the readout on, key to drawn", drawn))
        print(row(f"{name}: slice step with the readout on, key to next frame", frame))
        print(row(f"{name}: slice step, Playwright round trip", trip))
        if name == "Data":
            print(f"| Explore: first visit (its opening run and case prefetched in the background since the app opened), "
                  f"click to drawn | {explore_first[0]:.2f} s | | 1 |")
            print(f"| … seen by Playwright's polling | {explore_first[1]:.2f} s | | 1 |")
            print(f"| Explore: another case ({another[1]}, never opened: its maps computed on the visit), click to drawn "
                  f"| {another[0]:.2f} s | | 1 |")
    print(f"| Explore: three runs added beside it (their maps computed, sent once) | {beside_first:.2f} s | | 1 |")
    print(row("Explore, four maps: threshold move, key to drawn", four["thr_draw"]))
    print(row("Explore, four maps: threshold move, key to next frame", four["thr_frame"]))
    print(row("Explore, four maps: slice step, key to drawn", four["step_draw"]))
    print(row("Explore, four maps: slice step, key to next frame", four["step_frame"]))
    print(f"| Explore, four maps: server runs of the page during {args.moves} threshold moves and {args.moves} "
          f"slice steps | {four['reruns'][0]:.0f} | | 1 |")
    if re_added is not None:
        print(f"| Explore: a run's heatmap added beside it when its maps exist ({args.beside[-1]} taken out and chosen "
              f"again), click to drawn | {re_added:.2f} s | | 1 |")
    if real is not None:
        opened, (trip, drawn, frame) = real
        print(f"| Data: open a folder of real cases ({args.real.name}), Use folder → first case drawn | {opened['drawn']:.2f} s | | 1 |")
        print(f"| … of which the server's run of the page (read and prepare the case, pack its volumes) | {opened['server']:.2f} s | | 1 |")
        print(f"| … of which the browser unpacks the volumes / draws them | {opened['unpack']:.2f} s / {opened['draw']:.2f} s | | 1 |")
        print(row("Data (real case): slice step with the readout on, key to drawn", drawn))
        print(row("Data (real case): slice step with the readout on, key to next frame", frame))
    print(row("Compare: slice-threshold move, key to drawn", cmp_drawn))
    print(row("Compare: slice-threshold move, key to next frame", cmp_frame))
    print(row("Compare: slice-threshold move, Playwright round trip", cmp_trip))
    print(f"| Compare: server reruns caused by {len(cmp_drawn)} threshold moves | {cmp_reruns} | | |")
    where = "" if train_charts else " (no run with charts on this home)"
    print(row(f"Train: page drawn, server (per run of the page){where}", train_server))
    print(row(f"Train: loss smoothing changed, round trip until idle{where}", train_trip))
    print(f"| Explore: first visit after an app restart (maps and case read from the maps cache on disk), click to drawn "
          f"| {explore_again[0]:.2f} s | | 1 |")
    print(f"| … seen by Playwright's polling | {explore_again[1]:.2f} s | | 1 |")
    print(f"| Explore: revisit (Data, then Explore again; maps kept in memory), click to drawn | {explore_revisit[0]:.2f} s | | 1 |")
    print(f"| … seen by Playwright's polling | {explore_revisit[1]:.2f} s | | 1 |")


if __name__ == "__main__":
    main()
