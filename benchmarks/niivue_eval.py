"""Evaluation of NiiVue (the ``niivue-streamlit`` component) as the app's viewer, in headless Chromium.

    pip install niivue-streamlit        # not a dependency of uad: only this evaluation uses it
    python benchmarks/niivue_eval.py [--steps 10] [--case BraTS2021_00000]

Shows one demo case's FLAIR with two overlays, the segmentation and the shipped autoencoder's anomaly map
(``uad.score.nifti_bytes``, on the source grid), in NiiVue's multiplanar view inside a throwaway
Streamlit page, then measures in Chromium with the WebGL flags NiiVue needs here (SwiftShader, no GPU):

* whether it loads offline (every request the page makes is logged; anything not from 127.0.0.1 counts);
* time until the first drawing (the canvas stops being blank);
* per slice step (NiiVue's own key, U = crosshair forward, with the mouse over the view): key press until
  the WebGL drawing has finished (``gl.finish()`` in the page), and the Playwright round trip.

Compare with ``benchmarks/app_bench.py`` (the app's own canvas viewer) on the same machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from test_browser import CHROMIUM, _free_port  # noqa: E402

WEBGL_ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
              "--ignore-gpu-blocklist", "--disable-background-networking", "--disable-component-update"]

PAGE = '''
import streamlit as st
from niivue_component import niivue_viewer

st.set_page_config(layout="wide")
folder = {folder!r}
read = lambda name: open(f"{{folder}}/{{name}}", "rb").read()
niivue_viewer(nifti_data=read("flair.nii.gz"), filename="flair.nii.gz", height=700, view_mode="multiplanar",
              overlays=[{{"data": read("seg.nii.gz"), "name": "seg.nii.gz", "colormap": "warm", "opacity": 0.4}},
                        {{"data": read("anomaly.nii.gz"), "name": "anomaly.nii.gz", "colormap": "inferno", "opacity": 0.7}}],
              settings={{"crosshair": True, "radiological": True, "colorbar": True}}, update_interval_ms=None,
              key="nv")
'''


def write_inputs(folder: Path, case_id: str) -> None:
    """The case's FLAIR and seg as they are, and the shipped autoencoder's anomaly map on the same grid."""
    import shutil

    from uad.checkpoints import weights as ckpt_weights
    from uad.core import paths
    from uad.data.cases import discover_cases
    from uad.data.demo import ensure_demo
    from uad.data.preprocess import preprocess_case
    from uad.scoring import maps, nifti, recipe, scorers

    ensure_demo()
    case = next(c for c in discover_cases(paths.demo_dir())[0] if c.case_id == case_id)
    shutil.copy(case.modalities["flair"], folder / "flair.nii.gz")
    shutil.copy(case.seg, folder / "seg.nii.gz")
    ckpt = ckpt_weights.load(paths.checkpoints_dir() / "autoencoder")
    prep = preprocess_case(case, ckpt.preprocess)
    vs = maps.score_case(scorers.ModelScorer(ckpt.model), prep, recipe.ScoringRecipe())
    (folder / "anomaly.nii.gz").write_bytes(nifti.nifti_bytes(vs.maps, prep.geometry))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--case", default="BraTS2021_00000")
    args = parser.parse_args()
    try:
        import niivue_component  # noqa: F401
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise SystemExit(f"needs: pip install niivue-streamlit playwright ({exc})") from None

    work = Path(tempfile.mkdtemp(prefix="uad-niivue-"))
    write_inputs(work, args.case)
    script = work / "page.py"
    script.write_text(textwrap.dedent(PAGE.format(folder=str(work))))
    port = _free_port()
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless=true",
                             "--server.address=127.0.0.1", f"--server.port={port}", "--server.fileWatcherType=none",
                             "--browser.gatherUsageStats=false"], cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    url = f"http://127.0.0.1:{port}"
    requests: list[str] = []
    try:
        import urllib.request

        for _ in range(150):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=WEBGL_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(400_000)
            page.on("request", lambda r: requests.append(r.url))
            t0 = time.perf_counter()
            page.goto(url)
            frame = page.wait_for_selector('iframe[title*="niivue"]').content_frame()
            frame.wait_for_selector("canvas")
            canvas = frame.locator("canvas").first
            # Drawn = a screenshot of the canvas shows an image (a WebGL canvas cannot be read back from the
            # page once presented: NiiVue does not preserve its drawing buffer).
            import cv2
            import numpy as np

            while True:
                png = canvas.screenshot(timeout=400_000)
                image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
                if image is not None and image.std() > 10 or time.perf_counter() - t0 > 400:
                    break
                page.wait_for_timeout(200)
            first = time.perf_counter() - t0
            time.sleep(2)
            page.screenshot(path=str(work / "niivue.png"))
            box = canvas.bounding_box()
            # Focus NiiVue's frame (a click sets its crosshair) and keep the mouse over the view: its keys act
            # only then.
            page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.3)
            page.wait_for_timeout(2000)
            before = canvas.screenshot(timeout=400_000)
            inner, trips = [], []
            for _ in range(args.steps):
                frame.evaluate("() => { window.__t0 = null; window.addEventListener('keydown', e => { window.__t0 = e.timeStamp; }, {capture: true, once: true}); }")
                t = time.perf_counter()
                page.keyboard.press("u")
                ms = frame.evaluate("""() => new Promise(done => requestAnimationFrame(() => {
                    const gl = document.querySelector('canvas').getContext('webgl2'); gl.finish();
                    done(window.__t0 === null ? null : performance.now() - window.__t0); }))""")
                trips.append((time.perf_counter() - t) * 1000)
                if ms is not None:
                    inner.append(ms)
            moved = canvas.screenshot(timeout=400_000) != before  # the steps changed what is drawn
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    external = sorted({u for u in requests if not u.startswith(url) and not u.startswith("data:") and not u.startswith("blob:")})
    print("| measure | value |\n|---|---|")
    print(f"| requests outside 127.0.0.1 | {len(external)}{': ' + ', '.join(external[:5]) if external else ''} |")
    print(f"| first drawing (page opened to WebGL canvas drawn) | {first:.1f} s |")
    if inner:
        print(f"| slice step, key to drawn (gl.finish), median / max | {statistics.median(inner):.0f} / {max(inner):.0f} ms (n={len(inner)}) |")
    print(f"| slice step, Playwright round trip, median / max | {statistics.median(trips):.0f} / {max(trips):.0f} ms |")
    print(f"| the steps changed the drawing | {'yes' if moved else 'no'} |")
    print(f"| screenshot | {work / 'niivue.png'} |")


if __name__ == "__main__":
    main()
