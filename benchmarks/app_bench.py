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
  server's time (``ui.timed``) and the round trip until the viewer has redrawn;
* per slice-threshold move on Compare (→ on the first model's threshold, computed and drawn in the browser):
  key to drawn and key to next frame (measured in the page), the Playwright round trip, and how many server
  reruns the moves caused (the server log's page timings: the goal is none);
* the Train page: the server's time to draw it (every run's card, table and charts), and a change of the loss
  smoothing (a page rerun) until the charts are drawn again.

Explore's first visit computes the run's maps for the case once; it is timed separately.
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
    eventually,
    goto,
    slider,
    threshold_frame,
    viewer_frame,
    viewer_state,
    viewer_step,
    wait_idle,
)

TIMING = re.compile(r"\[uad-app\] (?P<name>[\w ]+): (?P<ms>\d+) ms")


def start_server(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ, UAD_APP_TIMINGS="1")
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
        rng.press("ArrowRight" if i < moves // 2 else "ArrowLeft")
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
    log_path = Path(tempfile.mkdtemp(prefix="uad-app-bench-")) / "server.log"
    proc, url = start_server(log_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            cold = first_render(browser, url)
            time.sleep(3)  # let the background warm-up (torch import) finish, as a user reading the page would
            warm = first_render(browser, url)

            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            wait_idle(page)
            goto(page, "Data")
            data = scrub(page, args.moves)
            t0 = time.perf_counter()
            goto(page, "Explore")
            viewer_frame(page)
            explore_first = time.perf_counter() - t0
            explore = scrub(page, args.moves)
            thr_server, thr_trip = threshold_moves(page, log_path, max(args.moves // 4, 3))
            cmp_drawn, cmp_frame, cmp_trip, cmp_reruns = compare_threshold_moves(page, log_path, args.moves)
            train_server, train_trip, train_charts = train_page(page, log_path, max(args.moves // 4, 3))
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
            print(f"| Explore: first visit (maps for the case computed once) | {explore_first:.2f} s | | 1 |")
    print(row("Explore: threshold move, server (per rerun)", thr_server))
    print(row("Explore: threshold move, round trip until redrawn", thr_trip))
    print(row("Compare: slice-threshold move, key to drawn", cmp_drawn))
    print(row("Compare: slice-threshold move, key to next frame", cmp_frame))
    print(row("Compare: slice-threshold move, Playwright round trip", cmp_trip))
    print(f"| Compare: server reruns caused by {len(cmp_drawn)} threshold moves | {cmp_reruns} | | |")
    where = "" if train_charts else " (no run with charts on this home)"
    print(row(f"Train: page drawn, server (per run of the page){where}", train_server))
    print(row(f"Train: loss smoothing changed, round trip until idle{where}", train_trip))

if __name__ == "__main__":
    main()
