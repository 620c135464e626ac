"""App benchmark: first page render and the viewer's slice-step latency, in a real browser on the demo cohort.

    python benchmarks/app_bench.py [--moves 20]

Starts ``streamlit run app/Home.py`` on a free port (the project's own data, runs and shipped checkpoints;
the demo cohort is generated first if missing), drives Debian's Chromium with Playwright, and prints:

* first render: from opening the URL until the Overview page is drawn and idle, for the first browser
  session on a freshly started server (cold: the script's imports run now) and for a second session;
* per slice step in the viewer on Data and Explore (→ on its axial slice control): key press to drawn
  (the key event's time stamp to the end of the component's drawing, measured in the page), key press to
  the next animation frame (when the browser paints it: what the 150 ms goal is about), and the
  Playwright round trip (press sent from Python until the page reports the new drawing);
* per threshold move on Explore (server rerun of the viewer fragment, new prediction volume sent): the
  server's time (``ui.timed``) and the round trip until the viewer has redrawn.

Explore's maps (``uad.scoring.cache``) are timed in their own rows, against an empty maps cache of the
benchmark's own (``UAD_MAPS_CACHE_DIR``), from the click until the viewer has drawn: Explore's first visit to
a case (the run's maps computed), adding a second run's heatmap beside it (its maps computed), coming back
from the Data page and adding that heatmap again (maps in the app's memory), and, after the server is
restarted (a fresh process that has only the maps on disk; the first render's background warm-up done),
opening the same case again and adding the same heatmap again (maps read, not computed).
Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_browser import (  # noqa: E402
    CHROMIUM,
    IDLE,
    _free_port,
    goto,
    slider,
    viewer_frame,
    viewer_state,
    viewer_step,
    wait_idle,
)

TIMING = re.compile(r"\[uad-app\] (?P<name>[\w ]+): (?P<ms>\d+) ms")


SECOND_RUN = "vae"  # the shipped checkpoint whose heatmap is added beside the default run's


def start_server(log_path: Path, maps_dir: Path) -> tuple[subprocess.Popen, str]:
    from uad.scoring.cache import DIR_ENV

    port = _free_port()
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


def scrub(page, moves: int) -> tuple[list[float], list[float], list[float]]:
    """Step the viewer's axial slice ``moves`` times (→, then ← for the second half, staying in range);
    (Playwright round trip, key to drawn, key to next frame) in ms per step."""
    frame = viewer_frame(page)
    steps = [viewer_step(frame, "ArrowRight" if i < moves // 2 else "ArrowLeft") for i in range(moves)]
    return [s[0] for s in steps], [s[1] for s in steps], [s[2] for s in steps]


def threshold_moves(page, log_path: Path, moves: int) -> tuple[list[float], list[float]]:
    """Press → on Explore's pixel threshold slider; (server ms per rerun, round trip until the viewer has
    redrawn with the new prediction) per move. A move reruns the viewer fragment, and once more when the
    browser reports the volumes it now holds (a cheap rerun that sends no volume)."""
    s = slider(page, "Pixel threshold")
    s.focus()
    before_server = len(server_timings(log_path, "explore_viewer"))
    trips = []
    for _ in range(moves):
        frame = viewer_frame(page)
        drawn = viewer_state(frame)["drawnAt"]
        t0 = time.perf_counter()
        s.press("ArrowRight")
        frame.wait_for_function("prev => document.getElementById('root').dataset.drawnAt !== prev", arg=drawn)
        trips.append((time.perf_counter() - t0) * 1000)
        page.wait_for_function(IDLE)  # before the next move (not timed): the app settles
    time.sleep(0.3)
    return server_timings(log_path, "explore_viewer")[before_server:], trips


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


def open_explore(page) -> float:
    """Seconds from clicking Explore in the navigation until its viewer has drawn the default run on the case
    (no settling pause inside the timing)."""
    t0 = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"] a', has_text="Explore").first.click()
    page.wait_for_function("() => [...document.querySelectorAll('h1')].some(h => h.innerText.includes('Explore'))")
    _wait_for(lambda: _explore_viewer(page), "Explore's viewer")
    seconds = time.perf_counter() - t0
    wait_idle(page)
    return seconds


def add_heatmap(page, run: str) -> float:
    """Seconds from choosing ``run`` in Explore's "Heatmaps beside it" until the viewer draws its anomaly map too."""
    before = _explore_viewer(page).locator('.head', has_text="Anomaly map").count()
    box = page.locator('[data-testid="stMultiSelect"]', has_text="Heatmaps beside it").first
    box.locator("input").click()
    box.locator("input").fill(f"{run} ·")
    page.locator('[role="option"]', has_text=f"{run} ·").first.wait_for()
    t0 = time.perf_counter()
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    _wait_for(lambda: _explore_viewer(page, before + 1), f"the heatmap of {run}")
    seconds = time.perf_counter() - t0
    wait_idle(page)
    return seconds


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
            thr_server, thr_trip = threshold_moves(page, log_path, max(args.moves // 4, 3))
            heat_first = add_heatmap(page, SECOND_RUN)
            goto(page, "Data")  # and back: the app and the browser still hold the case's maps and volumes
            explore_back = open_explore(page)
            heat_back = add_heatmap(page, SECOND_RUN)
            browser.close()

            # A restarted app: only the maps cache on disk remembers the maps.
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
            proc, url = start_server(work / "server-restarted.log", maps_dir)
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = warm_session(browser, url)
            explore_again = open_explore(page)
            heat_again = add_heatmap(page, SECOND_RUN)
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)

    print("| measure | median | max | n |\n|---|---:|---:|---:|")
    print(f"| first render, fresh server | {cold:.2f} s | | 1 |")
    print(f"| first render, second session | {warm:.2f} s | | 1 |")
    for name, (trip, drawn, frame) in (("Data", data), ("Explore", explore)):
        print(row(f"{name}: slice step, key to drawn", drawn))
        print(row(f"{name}: slice step, key to next frame", frame))
        print(row(f"{name}: slice step, Playwright round trip", trip))
        if name == "Data":
            print(f"| Explore: first visit (maps computed) | {explore_first:.2f} s | | 1 |")
    print(row("Explore: threshold move, server (per rerun)", thr_server))
    print(row("Explore: threshold move, round trip until redrawn", thr_trip))
    for name, seconds in ((f"add a second run's heatmap ({SECOND_RUN}, maps computed)", heat_first),
                          ("revisit from another page (maps in the app's memory)", explore_back),
                          ("add the second run's heatmap again (maps in memory)", heat_back),
                          ("revisit after an app restart (maps on disk)", explore_again),
                          ("add the second run's heatmap after the restart (maps on disk)", heat_again)):
        print(f"| Explore: {name} | {seconds:.2f} s | | 1 |")

if __name__ == "__main__":
    main()
