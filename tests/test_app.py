"""The Streamlit app under AppTest: every page renders on a small demo cohort with a trained run, the main
widgets change what is shown, and bad input gives a message on the page instead of a traceback.

One home (6 synthetic cases, a 1-epoch autoencoder at 64 px, evaluated, plus a copy of it standing in for a
shipped checkpoint) is built once per test session; tests that add runs or folders remove them again.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest

from uad.core import fileio, processes
from uad.runs import folders
from uad.runs import meta as run_meta

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app" / "Home.py"
RUN = "fixture-ae"
SHIPPED = "autoencoder"  # name of the stand-in shipped checkpoint
TIMEOUT = 120

st_testing = pytest.importorskip("streamlit.testing.v1")


# -- the shared home -----------------------------------------------------------------------------------------
def _uad(args: list[str], home: Path) -> None:
    env = dict(os.environ, UAD_HOME=str(home))
    env.pop("UAD_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "uad", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"python -m uad {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def build_app_home(base: Path) -> Path:
    """Demo cohort, one tiny trained + evaluated run, and a 'shipped' copy of it. Reused when already built."""
    if (base / "READY").is_file():
        return base
    shutil.rmtree(base, ignore_errors=True)
    _uad(["synth", "--out", str(base / "data" / "demo"), "--cases", "6", "--seed", "0", "--workers", "2"], base)
    run = base / "runs" / RUN
    _uad(["train", "--model", "autoencoder", "--epochs", "1", "--image-size", "64", "--out", str(run), "--no-progress"], base)
    _uad(["evaluate", "--run", str(run), "--bootstrap", "50"], base)
    shipped = base / "shipped" / SHIPPED
    shipped.mkdir(parents=True)
    shutil.copy(run / "config.json", shipped / "config.json")
    for sub in ("best", "eval"):
        shutil.copytree(run / sub, shipped / sub)
    (base / "READY").write_text("ok\n")
    return base


@pytest.fixture(scope="session")
def app_home(tmp_path_factory) -> Path:
    # UAD_TEST_APP_HOME: reuse a home built before (minutes on a busy CPU) across test sessions.
    return build_app_home(Path(os.environ.get("UAD_TEST_APP_HOME") or tmp_path_factory.getbasetemp() / "uad-app-home"))


@pytest.fixture
def home(app_home, monkeypatch) -> Path:
    from uad.core import paths

    monkeypatch.setenv("UAD_HOME", str(app_home))
    # The app lists shipped checkpoints from the repository's checkpoints/; point it at the stand-in.
    monkeypatch.setattr(paths, "checkpoints_dir", lambda: app_home / "shipped")
    return app_home


def new_app(session: dict | None = None):
    at = st_testing.AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for k, v in (session or {}).items():
        at.session_state[k] = v
    return at.run()


def page(at, name: str):
    at.switch_page(f"views/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def plain(markdown) -> str:
    """What escaped Markdown renders as: backslash escapes resolved, invisible word joiners dropped (the app
    escapes every user- or file-supplied string: app/safe.py)."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", str(markdown)).replace("\u2060", "")


def texts(at) -> str:
    """Everything written as markdown, captions, errors, warnings and infos, as one string to search (as rendered)."""
    parts = []
    for group in (at.markdown, at.caption, at.error, at.warning, at.info, at.success):
        parts += [plain(e.value) for e in group]
    return "\n".join(parts)


def click(at, label: str):
    """Click a button (form submit buttons included) by its label."""
    buttons = list(at.button) + [b for b in at.form_submit_button if b not in list(at.button)]
    return next(b for b in buttons if b.label == label).click().run()


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def copy_run(home: Path, name: str, with_eval: bool = True) -> Path:
    dst = home / "runs" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(home / "runs" / RUN, dst, ignore=None if with_eval else shutil.ignore_patterns("eval"))
    return dst


# -- every page ----------------------------------------------------------------------------------------------
def test_every_page_renders(home):
    at = new_app()
    assert not at.exception, [e.value for e in at.exception]
    assert "Dataset" in [h.value for h in at.subheader]
    for name in ("data", "train", "explore", "compare"):
        page(at, name)
        assert not at.error, f"{name}: {[e.value for e in at.error]}"


def test_overview_lists_runs_with_metrics(home):
    at = new_app()
    df = at.dataframe[0].value
    row = df[df.run == RUN].iloc[0]
    assert row.status == "completed" and row["evaluated on"] == "demo cohort · test split"
    assert 0 <= row["slice AUROC"] <= 1
    assert (df.run == SHIPPED).sum() == 1
    assert [m.value for m in at.metric][:1] == ["6"]  # cases in the demo cohort


def test_overview_generates_the_demo_cohort_when_missing(tmp_path, monkeypatch):
    import json

    home = tmp_path / "empty-home"
    monkeypatch.setenv("UAD_HOME", str(home))
    at = new_app()
    assert not at.exception
    assert "not generated yet" in texts(at)
    click(at, "Generate the demo cohort")
    assert not at.exception, [e.value for e in at.exception]
    pid = json.loads((home / "data" / "synth-launch.json").read_text())["pid"]
    try:
        assert at.progress and "Generating the demo cohort" in at.progress[0].proto.text
        assert " so far" in at.progress[0].proto.text  # the time it has taken on this machine, as it goes
        assert "not generated yet" not in texts(at)  # the progress replaces the notice
        # The Data page points to the Overview meanwhile instead of failing on the missing folder.
        assert "not generated yet" in texts(page(at, "data"))
    finally:
        _kill(pid)


# -- the viewer component, as the browser receives it ----------------------------------------------------------
def viewer_spec(at) -> dict:
    """What the page hands to the viewer component (AppTest cannot draw it; the browser tests do)."""
    import json

    comps = at.get("component_instance")
    assert len(comps) == 1, f"expected one viewer, found {len(comps)}"
    return json.loads(comps[0].proto.json_args)["spec"]


def viewer_volume(at, name: str) -> np.ndarray:
    spec = viewer_spec(at)
    info = spec["volumes"][name]
    raw = next(a.bytes for a in at.get("component_instance")[0].proto.special_args if a.key == info["arg"])
    if info["encoding"] == "deflate":
        import zlib

        raw = zlib.decompress(raw)
    return np.frombuffer(raw, np.dtype(info["dtype"]).newbyteorder("<")).reshape(spec["shape"])


def viewer_text(spec: dict) -> str:
    return "\n".join([*spec["notes"], *(i["label"] for i in spec["legend"]), *(r["label"] for r in spec["stats"])])


def case_box(at):
    return next(s for s in at.selectbox if s.label == "Case")


# -- Data ----------------------------------------------------------------------------------------------------
def test_data_viewer_gets_every_modality_and_the_labels(home):
    at = page(new_app(), "data")
    spec = viewer_spec(at)
    assert spec["case_id"] == case_box(at).value == "BraTS2021_00000"
    assert [p["title"] for p in spec["panels"]] == ["FLAIR", "T1", "T1CE", "T2"]
    Z, Y, X = spec["shape"]
    assert Z < 155 and len(spec["slice_labels"]) == Z  # cropped to the brain, each Z named by its source slice
    labels = viewer_volume(at, "labels")
    assert set(np.unique(labels)) <= {0, 1, 2, 4} and (labels > 0).sum(axis=(1, 2)).argmax() == spec["start"][0]
    assert "BraTS 2021 labels" in viewer_text(spec) and "4 enhancing tumour" in viewer_text(spec)
    assert spec["convention"] == "radiological"


def test_data_brats2023_layout_and_labels(home, tmp_path):
    """BraTS 2023 names (t2f, t1n, t1c, t2w) and labels (3 = enhancing) are recognised and named."""
    import nibabel as nib

    src = home / "data" / "demo" / "BraTS2021_00000"
    case = tmp_path / "brats2023" / "BraTS-GLI-00000-000"
    case.mkdir(parents=True)
    for old, new in (("flair", "t2f"), ("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w")):
        shutil.copy(src / f"BraTS2021_00000_{old}.nii.gz", case / f"BraTS-GLI-00000-000-{new}.nii.gz")
    seg = nib.load(src / "BraTS2021_00000_seg.nii.gz")
    labels = np.asarray(seg.dataobj).copy()
    labels[labels == 4] = 3
    nib.save(nib.Nifti1Image(labels, seg.affine, seg.header), case / "BraTS-GLI-00000-000-seg.nii.gz")
    at = page(new_app({"data_root": str(case.parent)}), "data")
    assert not at.error, [e.value for e in at.error]
    spec = viewer_spec(at)
    assert "BraTS 2023 labels" in viewer_text(spec) and "3 enhancing tumour" in viewer_text(spec)
    assert len(spec["panels"]) == 4


def test_data_case_picker_changes_the_viewer(home):
    at = page(new_app(), "data")
    case_box(at).set_value("BraTS2021_00003").run()
    assert not at.exception and viewer_spec(at)["case_id"] == "BraTS2021_00003"
    assert viewer_spec(at)["source"].endswith("BraTS2021_00003")


def test_data_folder_switch_never_shows_another_folders_case(home, tmp_path):
    """Issue 11 #1: after 'Use folder' the case box and the viewer name the same case, of the new folder."""
    other = tmp_path / "other-folder"
    for src, dst in (("BraTS2021_00002", "BraTS2021_77000"), ("BraTS2021_00001", "BraTS2021_77001")):
        (other / dst).mkdir(parents=True)
        for f in (home / "data" / "demo" / src).iterdir():
            shutil.copy(f, other / dst / f.name.replace(src, dst))
    at = page(new_app(), "data")
    case_box(at).set_value("BraTS2021_00003").run()
    at.text_input(key="folder_input").input(str(other))
    click(at, "Use folder")
    assert not at.exception, [e.value for e in at.exception]
    box, spec = case_box(at), viewer_spec(at)
    assert box.value == spec["case_id"] == "BraTS2021_77000", (box.value, spec["case_id"])
    assert box.options == ["BraTS2021_77000", "BraTS2021_77001"]
    assert spec["source"] == str(other / "BraTS2021_77000")
    # The images are that case's: the same pixels as the demo case it was copied from.
    back = page(new_app(), "data")
    case_box(back).set_value("BraTS2021_00002").run()
    assert np.array_equal(viewer_volume(at, "flair"), viewer_volume(back, "flair"))
    # Issue 20 #8: coming back to a folder shows the case chosen there, not its first case.
    click(at, "Use demo")
    assert case_box(at).value == viewer_spec(at)["case_id"] == "BraTS2021_00003"
    at.text_input(key="folder_input").input(str(other))
    click(at, "Use folder")
    case_box(at).set_value("BraTS2021_77001").run()
    click(at, "Use demo")
    at.text_input(key="folder_input").input(str(other))
    click(at, "Use folder")
    assert case_box(at).value == viewer_spec(at)["case_id"] == "BraTS2021_77001"


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_data_bad_folder_gives_a_message(home, tmp_path, kind):
    target = {"missing": tmp_path / "nope", "file": tmp_path / "a.txt", "empty": tmp_path / "empty"}[kind]
    if kind == "file":
        target.write_text("x")
    if kind == "empty":
        target.mkdir()
    at = page(new_app(), "data")
    at.text_input(key="folder_input").input(str(target))
    click(at, "Use folder")
    assert not at.exception
    shown = texts(at)
    expected = {"missing": "does not exist", "file": "is not a folder", "empty": "No BraTS-style case"}[kind]
    assert expected in shown, shown
    click(at, "Use demo")
    assert "6 cases" in texts(at)


def test_data_corrupt_and_skipped_cases_are_reported(home, tmp_path):
    demo = home / "data" / "demo" / "BraTS2021_00000"
    root = tmp_path / "mixed"
    bad = root / "BraTS2021_00042"
    bad.mkdir(parents=True)
    (bad / "BraTS2021_00042_flair.nii.gz").write_bytes(b"not a nifti at all")
    shutil.copy(demo / "BraTS2021_00000_t1.nii.gz", bad / "BraTS2021_00042_t1.nii.gz")
    dup = root / "BraTS2021_00043"
    dup.mkdir()
    shutil.copy(demo / "BraTS2021_00000_flair.nii.gz", dup / "BraTS2021_00043_flair.nii.gz")
    shutil.copy(demo / "BraTS2021_00000_flair.nii.gz", dup / "BraTS2021_00043_flair.nii")
    at = new_app({"data_root": str(root)})
    page(at, "data")
    shown = texts(at)
    assert "BraTS2021_00042" in case_box(at).options[0]
    assert "flair" in shown and "not a readable NIfTI" in shown, shown
    assert "t1" not in [plain(e.value).split(":")[0] for e in at.error]  # the readable modality is still shown
    skipped = at.dataframe[0].value
    assert "BraTS2021_00043" in set(skipped.case) and skipped.reason.str.contains("two files").any()


def test_data_corrupt_or_tumour_free_segmentation_is_said_so(home, tmp_path):
    """A corrupt seg names its file and why (not "Unlabelled case"); an all-zero seg says no tumour is labelled."""
    import nibabel as nib

    src = home / "data" / "demo" / "BraTS2021_00000"
    root = tmp_path / "segs"
    for case in ("BraTS2021_00050", "BraTS2021_00051"):
        (root / case).mkdir(parents=True)
        for f in src.iterdir():
            shutil.copy(f, root / case / f.name.replace("BraTS2021_00000", case))
    bad = root / "BraTS2021_00050" / "BraTS2021_00050_seg.nii.gz"
    bad.write_bytes(bad.read_bytes()[:300])
    seg = nib.load(src / "BraTS2021_00000_seg.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(seg.shape, np.uint8), seg.affine), root / "BraTS2021_00051" / "BraTS2021_00051_seg.nii.gz")
    at = page(new_app({"data_root": str(root)}), "data")
    assert any("Segmentation unreadable" in plain(e.value) and str(bad) in plain(e.value) for e in at.error), [plain(e.value) for e in at.error]
    assert "Segmentation unreadable, not drawn" in viewer_text(viewer_spec(at)) and "Unlabelled" not in viewer_text(viewer_spec(at))
    case_box(at).set_value("BraTS2021_00051").run()
    spec = viewer_spec(at)
    assert "No tumour is labelled" in viewer_text(spec) and "enhancing" not in viewer_text(spec)
    assert spec["strip"]["bars"] == [] and spec["strip"]["empty_bars"] == "no tumour labelled in this case"


# -- Train ---------------------------------------------------------------------------------------------------
def test_train_lists_runs_and_shows_failures(home):
    failed = home / "runs" / "zz-failed-run"
    failed.mkdir()
    try:
        from uad.runs import folders

        folders.write_status(failed, "failed", model="autoencoder", error="ConfigError: learning rate must be > 0")
        (failed / "stdout.log").write_text("Traceback (most recent call last):\nboom\n")
        at = page(new_app(), "train")
        assert any("learning rate must be > 0" in plain(e.value) for e in at.error)
        assert RUN in texts(at)
    finally:
        shutil.rmtree(failed, ignore_errors=True)


def test_train_launch_and_cancel_survive_a_new_session(home):
    import json


    before = {p.name for p in (home / "runs").iterdir()}
    at = page(new_app(), "train")
    at.selectbox(key="train_model").set_value("vit").run()
    at.multiselect(key="train_mods").set_value(["flair", "t2"])
    at.select_slider(key="train_size").set_value(64)
    at.number_input(key="train_epochs").set_value(1)
    at.number_input(key="opt::vit::context_dropout").set_value(0.3)
    click(at, "Start training")
    assert not at.exception, [e.value for e in at.exception]
    new = [p for p in (home / "runs").iterdir() if p.name not in before]
    assert len(new) == 1, new
    run_dir = new[0]
    pid = json.loads((run_dir / "launch.json").read_text())["pid"]
    try:
        status = folders.read_status(run_dir)
        assert status["state"] in ("queued", "running") and status["model"] == "vit"
        # The form's values reach the trainer as one validated configuration (uad train --config), not flags.
        argv = json.loads((run_dir / "launch.json").read_text())["argv"]
        assert argv[:3] == ["train", "--config", str(run_dir / "request.json")], argv
        request = json.loads((run_dir / "request.json").read_text())
        assert request["modalities"] == ["flair", "t2"] and request["image_size"] == 64 and request["epochs"] == 1
        assert request["model_options"] == {"context_dropout": 0.3}
        # A fresh session (another tab, or a restarted app) sees the same run, from disk.
        other = page(new_app(), "train")
        assert run_dir.name in texts(other)
        other.button(key=f"cancel::{run_dir.name}").click().run()
        assert not other.exception
        deadline = time.time() + 60
        while time.time() < deadline and folders.read_status(run_dir)["state"] != "cancelled":
            time.sleep(0.5)
        assert folders.read_status(run_dir)["state"] == "cancelled"
    finally:
        _kill(pid)
        shutil.rmtree(run_dir, ignore_errors=True)


def _kill(pid) -> None:
    import signal


    if pid and processes.pid_alive(pid):
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except OSError:
            pass
    for _ in range(50):
        try:
            os.waitpid(int(pid), os.WNOHANG)
        except (ChildProcessError, OSError, TypeError):
            pass
        if not processes.pid_alive(pid):
            return
        time.sleep(0.1)


def test_train_resume_a_cancelled_run(home):
    import json


    run = copy_run(home, "zz-resume-me", with_eval=False)
    folders.write_status(run, "cancelled", epoch=1, epochs=1, reason="received SIGTERM")
    try:
        at = page(new_app(), "train")
        assert not at.exception
        at.number_input(key="resume_epochs::zz-resume-me").set_value(2)
        at.button(key="resume::zz-resume-me").click().run()
        assert not at.exception, [e.value for e in at.exception]
        launch = json.loads((run / "launch.json").read_text())
        assert launch["argv"][:3] == ["train", "--resume", str(run)] and launch["argv"][-2:] == ["--epochs", "2"]
        assert folders.read_status(run)["state"] in ("queued", "running", "completed")
    finally:
        _kill(json.loads((run / "launch.json").read_text())["pid"] if (run / "launch.json").exists() else None)
        shutil.rmtree(run, ignore_errors=True)


# -- Explore -------------------------------------------------------------------------------------------------
def explore(at, run: str = RUN, case: str = "BraTS2021_00000"):
    page(at, "explore")
    at.selectbox(key="explore_run").set_value(run).run()
    case_box(at).set_value(case).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def stat(spec: dict, label: str):
    """A per-slice number the page computed (not one the browser computes at its threshold), at the start slice."""
    row = next(r for r in spec["stats"] if r["label"].startswith(label))
    return row["values"][spec["start"][0]]


def test_explore_threshold_and_viewer(home):
    """The page hands the browser what it needs to threshold there: the run's float32 map, the eroded brain mask,
    the tumour, the recipe's minimum component size, the kept slices, and the evaluation's presets. No threshold
    widget is left on the server: moving it reruns nothing (tests/test_browser.py checks the browser's numbers)."""
    at = explore(new_app())
    assert not at.error, [e.value for e in at.error]
    spec = viewer_spec(at)
    assert spec["case_id"] == "BraTS2021_00000"
    titles = [(p["title"], p["subtitle"]) for p in spec["panels"]]
    assert titles[:3] == [("Input ({channel}) + tumour outline", ""), ("Reconstruction ({channel})", RUN), ("Anomaly map", RUN)]
    assert titles[3] == ("Thresholded vs ground truth", RUN)
    assert spec["channels"] == ["FLAIR"]
    T = spec["threshold"]
    assert (T["map"], T["mask"], T["truth"], T["min_component"]) == ("map0", "brain", "tumour", 0)
    assert spec["volumes"]["map0"]["dtype"] == "float32" and spec["volumes"]["brain"]["dtype"] == "uint8"
    assert [spec["slice_labels"][z] for z in T["kept_z"]] == [s for s in spec["slice_labels"] if s is not None]
    # Presets at the healthy-FPR thresholds of the run's evaluation; the threshold starts at the 5 % one.
    thresholds = [t["threshold"] for t in home_metrics(home)["healthy_fpr_thresholds"]]
    assert [p["label"] for p in T["presets"]] == ["1%", "5%", "10%"]
    assert [p["value"] for p in T["presets"]] == pytest.approx(thresholds)
    assert T["value"] == pytest.approx(thresholds[1]) and T["min"] == 0 <= max(thresholds) <= T["max"]
    assert not [s for s in at.slider if "threshold" in str(s.label).lower()] and not [b for b in at.button if "preset" in str(b.key)]
    # Numbers at the threshold are the browser's (their source named), slice scores the page's.
    sources = {r["label"]: r.get("source") for r in spec["stats"]}
    assert sources[f"Dice · this slice ({RUN})"] == "dice" and sources["Flagged pixels · this slice"] == "flagged"
    assert 0 <= stat(spec, f"Slice score · {RUN}") and "threshold" not in json_dumps(spec["strip"])
    # The map that travels is uad's, value for value, on the viewer's grid.
    m = viewer_volume(at, "map0")
    kept = m[T["kept_z"]]
    assert kept.max() > 0 and (m[[z for z in range(len(m)) if z not in T["kept_z"]]] == 0).all()
    assert any(d.label.startswith("Download") for d in at.download_button)


def json_dumps(obj) -> str:
    import json

    return json.dumps(obj)


def test_explore_reads_a_runs_maps_from_disk_after_a_restart(home, monkeypatch):
    """A case's maps are computed once per run and recipe (uad.scoring.cache): a restarted app (no Streamlit
    cache left) shows the same maps without computing them again."""
    import streamlit as st

    from uad.scoring import cache, maps

    at = explore(new_app())
    heat = viewer_volume(at, "map0").copy()
    assert list(cache.cache_dir().glob("*.npz"))
    st.cache_resource.clear()
    st.cache_data.clear()
    computed = []
    for module in (cache, maps):
        monkeypatch.setattr(module, "score_case", lambda *a, **k: computed.append(a) or pytest.fail("maps computed again"))
    at = explore(new_app())
    assert not at.error and not computed and np.array_equal(viewer_volume(at, "map0"), heat)


def test_the_app_computes_explores_opening_view_ahead_and_explore_reads_it(home, monkeypatch, tmp_path):
    """Issue 19: once the app's first page is drawn, a background thread computes the maps of the run and case
    Explore opens with, with Explore's own recipe; the first visit to Explore reads them instead of computing."""
    import streamlit as st

    from uad.scoring import cache, maps

    monkeypatch.setenv("UAD_APP_PREFETCH", "1")
    monkeypatch.setenv(cache.DIR_ENV, str(tmp_path / "maps"))  # empty: nothing computed before this test
    st.cache_resource.clear()  # a fresh server: the prefetch has not run for this folder

    def entries():
        return [p for p in cache.cache_dir().glob("*.npz") if not p.name.startswith("case-")]

    new_app()  # Overview drawn; the prefetch starts in the background
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not entries():
        time.sleep(0.2)
    assert entries(), "the prefetch wrote no maps"
    computed = []
    for module in (cache, maps):
        monkeypatch.setattr(module, "score_case", lambda *a, **k: computed.append(a) or pytest.fail("maps computed again"))
    at = page(new_app(), "explore")  # its own opening run and case, as a researcher's first visit
    assert not at.exception and not at.error and not computed
    assert viewer_volume(at, "map0").any() and len(entries()) == 1


def test_explore_heatmaps_side_by_side_on_one_scale(home):
    other = copy_run(home, "zz-second-model")
    try:
        at = explore(new_app())
        at.multiselect(key="explore_others").set_value(["zz-second-model"]).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        spec = viewer_spec(at)
        heat_panels = [p for p in spec["panels"] if any(o["kind"] == "heat" for o in p["overlays"])]
        # Each heatmap names its run in full, with the colour of that run's line in the slice strip.
        assert [(p["title"], p["subtitle"]) for p in heat_panels] == [("Anomaly map", RUN), ("Anomaly map", "zz-second-model")]
        assert [line["name"] for line in spec["strip"]["lines"]] == [RUN, "zz-second-model"]
        assert [p["colour"] for p in heat_panels] == [line["colour"] for line in spec["strip"]["lines"]]
        assert heat_panels[0]["colour"] != heat_panels[1]["colour"]
        # One colour scale (spec.heat.vmax) for both maps; the copy's map is the same, value for value.
        assert np.array_equal(viewer_volume(at, "map0"), viewer_volume(at, "map1"))
        # Choosing the compared run as the main one drops it from the comparison instead of failing.
        at.selectbox(key="explore_run").set_value("zz-second-model").run()
        assert not at.exception and at.multiselect(key="explore_others").value == []
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_explore_keeps_its_choices_when_the_page_is_left(home):
    """Issue 20 #5: the heatmaps chosen beside the run (and the run and case) are still chosen after a visit to
    another page."""
    other = copy_run(home, "zz-kept-model")
    try:
        at = explore(new_app(), case="BraTS2021_00003")
        at.multiselect(key="explore_others").set_value(["zz-kept-model"]).run()
        page(at, "data")
        page(at, "explore")
        assert at.multiselect(key="explore_others").value == ["zz-kept-model"]
        assert at.selectbox(key="explore_run").value == RUN and case_box(at).value == "BraTS2021_00003"
        assert [p["subtitle"] for p in viewer_spec(at)["panels"] if p["title"] == "Anomaly map"] == [RUN, "zz-kept-model"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_explore_opens_a_completed_run_not_the_newest_cancelled_one(home, tmp_path, monkeypatch):
    """Issue 11 #9: without a suggested shipped checkpoint, Explore opens the best completed run."""
    from uad.core import paths

    monkeypatch.setattr(paths, "checkpoints_dir", lambda: tmp_path / "no-shipped")
    cancelled = copy_run(home, "zzzz-newest-cancelled", with_eval=False)
    folders.write_status(cancelled, "cancelled", epoch=0, epochs=3, reason="received SIGTERM")
    try:
        at = page(new_app(), "explore")
        assert at.selectbox(key="explore_run").options[0].startswith("zzzz-newest-cancelled")  # newest first in the list...
        assert at.selectbox(key="explore_run").value == RUN  # ...but the completed, evaluated run opens
        at.selectbox(key="explore_run").set_value("zzzz-newest-cancelled").run()
        assert any("is cancelled" in plain(w.value) for w in at.warning)
    finally:
        shutil.rmtree(cancelled, ignore_errors=True)


def home_metrics(home: Path) -> dict:
    import json

    return json.loads((home / "runs" / RUN / "eval" / "demo" / "test" / "metrics.json").read_text())


def test_explore_shipped_checkpoint(home):
    at = explore(new_app(), run=SHIPPED, case="BraTS2021_00002")
    assert not at.error, [e.value for e in at.error]
    assert viewer_spec(at)["threshold"]["truth"] == "tumour"  # a labelled case: the browser shows its Dice


def test_explore_unlabelled_case_has_no_dice(home, tmp_path):
    src = home / "data" / "demo" / "BraTS2021_00000"
    dst = tmp_path / "unlabelled" / "BraTS2021_00000"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if "seg" not in f.name:
            shutil.copy(f, dst / f.name)
    at = explore(new_app({"data_root": str(dst.parent)}))
    assert not at.error, [e.value for e in at.error]
    assert "no Dice" in texts(at)
    assert viewer_spec(at)["threshold"]["truth"] is None and "tumour" not in viewer_spec(at)["volumes"]
    assert not any(r["label"].startswith("Dice") for r in viewer_spec(at)["stats"])


def test_explore_corrupt_checkpoint_gives_a_message(home):
    bad = copy_run(home, "zz-corrupt-ckpt")
    try:
        weights = bad / "best" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        at = explore(new_app(), run="zz-corrupt-ckpt")
        assert any("corrupt" in plain(e.value) or "truncated" in plain(e.value) for e in at.error), [plain(e.value) for e in at.error]
        (bad / "best" / "checkpoint.json").write_text("{ not json")
        at = explore(new_app(), run="zz-corrupt-ckpt")
        assert at.error and not at.exception
    finally:
        shutil.rmtree(bad, ignore_errors=True)


def test_explore_checkpoint_needing_a_missing_modality(home, tmp_path):
    src = home / "data" / "demo" / "BraTS2021_00000"
    dst = tmp_path / "t1only" / "BraTS2021_00000"
    dst.mkdir(parents=True)
    for name in ("t1", "seg"):
        shutil.copy(src / f"BraTS2021_00000_{name}.nii.gz", dst / f"BraTS2021_00000_{name}.nii.gz")
    at = explore(new_app({"data_root": str(dst.parent)}))
    assert any("trained on flair" in plain(e.value) and "has no flair" in plain(e.value) for e in at.error), [plain(e.value) for e in at.error]


def test_explore_run_deleted_while_open(home):
    doomed = copy_run(home, "zz-deleted-run")
    at = explore(new_app(), run="zz-deleted-run")
    assert not at.error
    shutil.rmtree(doomed)
    at.run()
    assert not at.exception
    assert "zz-deleted-run is no longer" in texts(at)


# -- Compare -------------------------------------------------------------------------------------------------
def threshold_component(at) -> tuple[dict, dict[str, bytes]]:
    """What Compare hands to its threshold component: the spec and the byte arguments (labels, scores)."""
    import json

    (comp,) = [c for c in at.get("component_instance") if "uad_thresholds" in c.proto.component_name]
    return json.loads(comp.proto.json_args)["spec"], {a.key: a.bytes for a in comp.proto.special_args}


def test_compare_curves_table_and_threshold(home):
    at = page(new_app(), "compare")
    assert set(at.multiselect(key="compare_runs").value) >= {RUN, SHIPPED}
    table = at.dataframe[0].value
    assert {"intensity baseline", "brain-area baseline"} <= set(table.method)
    assert table["slice AUROC [95% CI]"].str.contains(r"\[").any()
    # The slice-level operating points are the browser's: it gets each evaluation's labelled slices, exactly.
    spec, args = threshold_component(at)
    model = next(m for m in spec["models"] if m["id"] == RUN)
    slices = pd.read_csv(home / "runs" / RUN / "eval" / "demo" / "test" / "slices.csv")
    assert np.array_equal(np.frombuffer(args[model["labels"]], np.uint8), slices.label.to_numpy())
    assert np.array_equal(np.frombuffer(args[model["scores"]], "<f8"), slices.score.to_numpy())
    youden = home_metrics(home)["slice_youden"]["threshold"]
    assert model["start"] == youden and {"name": "Youden's J", "threshold": youden} in model["presets"]
    assert [line["name"] for line in spec["curves"]["roc"]["lines"]][:2] == ["intensity baseline", "brain-area baseline"]
    assert spec["where"] == "demo cohort · test split" and spec["files"]["roc"].startswith("slice-level-ROC_demo-cohort")
    assert not at.slider  # no server-side threshold slider left: a move never reruns the page
    at.multiselect(key="compare_runs").set_value([RUN]).run()
    assert not at.exception and len(at.dataframe[0].value) == 3  # one model + two baselines
    assert [m["id"] for m in threshold_component(at)[0]["models"]] == [RUN]


def test_compare_shows_the_paired_differences_uad_computes(home):
    """The Compare page's paired differences are uad's (the same rows `uad compare` prints), for each model
    against the intensity baseline and against the best model on the same slices."""
    from uad.evaluation import paired, summaries

    at = page(new_app(), "compare")
    at.multiselect(key="compare_runs").set_value([RUN, SHIPPED]).run()
    assert not at.exception
    shown = next(d.value for d in at.dataframe if "A − B [95% paired CI]" in d.value.columns)
    folders = {RUN: home / "runs" / RUN / "eval" / "demo" / "test"}
    expected_run = paired.evaluation_pairs([(RUN, summaries.EvaluationSummary.read(folders[RUN]))])[0][0]
    a, b, diffs = expected_run
    mine = shown[(shown.B == "intensity baseline") & shown.A.str.contains(RUN, regex=False)]
    assert list(mine["A − B [95% paired CI]"]) == [r["A − B [95% paired CI]"] for r in paired.difference_rows(a, b, diffs)]
    assert set(shown.B) - {"intensity baseline"}  # and the pair among the two models


def test_compare_keeps_its_runs_across_pages(home):
    """Issue #20 defect 3: the runs chosen on Compare survive a visit to another page."""
    at = page(new_app(), "compare")
    at.multiselect(key="compare_runs").set_value([SHIPPED]).run()
    page(at, "overview")
    page(at, "compare")
    assert at.multiselect(key="compare_runs").value == [SHIPPED]
    assert "Choose at least one run." not in texts(at)


def test_compare_turns_to_the_active_dataset_once_it_is_evaluated_there(home, tmp_path):
    """Issue #20 defect 3: the active dataset is another folder with no evaluation, so Compare shows the demo
    cohort's; once a run is evaluated on the active folder (the Evaluate button's job finishing), "Evaluated on"
    turns to it instead of staying on the old dataset."""
    import json

    from uad.data import identity

    other = tmp_path / "site-b"
    shutil.copytree(home / "data" / "demo" / "BraTS2021_00001", other / "BraTS2021_00001")
    run = copy_run(home, "zz-site-b")
    try:
        at = page(new_app({"data_root": str(other)}), "compare")
        assert at.selectbox(key="compare_dataset").value == ("demo", "test")
        ref = identity.dataset_ref(other)
        out = run / "eval" / ref.id / "all"
        shutil.copytree(run / "eval" / "demo" / "test", out)
        m = json.loads((out / "metrics.json").read_text())
        m["dataset"], m["split"], m["data_root"] = ref.to_dict(), "all", str(other)
        (out / "metrics.json").write_text(json.dumps(m))
        at.run()
        assert at.selectbox(key="compare_dataset").value == (ref.id, "all")
        assert at.multiselect(key="compare_runs").value == ["zz-site-b"]
        at.selectbox(key="compare_dataset").set_value(("demo", "test")).run()  # the user's choice stands after that
        page(at, "overview")
        page(at, "compare")
        assert at.selectbox(key="compare_dataset").value == ("demo", "test")
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_compare_evaluates_a_run_in_the_background(home):
    import json


    pending = copy_run(home, "zz-needs-eval", with_eval=False)
    out = pending / "eval" / "demo" / "test"
    try:
        at = page(new_app(), "compare")
        assert "not evaluated on the active dataset, demo cohort" in "\n".join(plain(e.proto.label) for e in at.expander)
        at.button(key="evaluate::compare::zz-needs-eval").click().run()
        assert not at.exception
        launch = json.loads((out / "launch.json").read_text())
        assert launch["argv"][launch["argv"].index("--data") + 1] == str(home / "data" / "demo")
        assert at.progress and "Evaluating zz-needs-eval on demo cohort" in plain(at.progress[0].proto.text)
        deadline = time.time() + 180
        while time.time() < deadline and processes.pid_alive(launch["pid"]):
            time.sleep(1)
        assert (out / "metrics.json").is_file(), (out / "eval.log").read_text()
        assert json.loads((out / "progress.json").read_text())["phase"] == "done"
        at = page(new_app(), "compare")
        assert any(o.endswith("zz-needs-eval") for o in at.multiselect(key="compare_runs").options)
    finally:
        shutil.rmtree(pending, ignore_errors=True)


def test_compare_deleted_run_is_dropped_with_a_message(home):
    doomed = copy_run(home, "zz-deleted-eval")
    at = page(new_app(), "compare")
    at.multiselect(key="compare_runs").set_value([RUN, "zz-deleted-eval"]).run()
    shutil.rmtree(doomed)
    at.run()
    assert not at.exception
    assert "zz-deleted-eval" in texts(at) and at.multiselect(key="compare_runs").value == [RUN]


def test_explore_suggests_the_real_trained_checkpoint_on_real_data(home, tmp_path, monkeypatch):
    """On a folder that is not the demo cohort, Explore starts from checkpoints/real/<model> and names its data."""
    import json

    from uad.core import paths

    shipped = tmp_path / "shipped"
    shutil.copytree(home / "shipped" / SHIPPED, shipped / SHIPPED)
    shutil.copytree(home / "shipped" / SHIPPED, shipped / "real" / SHIPPED)
    meta = shipped / "real" / SHIPPED / "best" / "checkpoint.json"
    info = json.loads(meta.read_text())
    info["training_data"] = {"name": "stand-in real set", "description": "", "citation": "A et al. 2015", "terms": "research"}
    from uad.checkpoints.record import canonical_hash

    info.pop("record_sha256")
    meta.write_text(json.dumps(info | {"record_sha256": canonical_hash(info)}))  # sealed again, as shipping does
    monkeypatch.setattr(paths, "checkpoints_dir", lambda: shipped)

    at = page(new_app(), "explore")  # the demo cohort: the demo-trained checkpoint
    assert at.selectbox(key="explore_run").value == SHIPPED
    assert "Trained on:** uad demo cohort" in texts(at)

    other = tmp_path / "other"
    shutil.copytree(home / "data" / "demo" / "BraTS2021_00000", other / "BraTS2021_00000")
    at = page(new_app({"data_root": str(other)}), "explore")
    assert at.selectbox(key="explore_run").value == f"real/{SHIPPED}"
    assert "stand-in real set" in texts(at) and "A et al. 2015" in texts(at)
    at.selectbox(key="explore_run").set_value(SHIPPED).run()
    assert f"real/{SHIPPED}" in "\n".join(plain(i.value) for i in at.info)  # the real set is suggested


# -- evaluation per dataset, baselines, colours, per-case table, report, config diff --------------------------
def _variant(home: Path, name: str, size: int, intensity_auroc: float) -> Path:
    """A copy of the fixture run whose evaluation claims another working size (and so other baseline numbers)."""
    import json

    run = copy_run(home, name)
    path = run / "eval" / "demo" / "test" / "metrics.json"
    m = json.loads(path.read_text())
    m["preprocess"]["image_size"] = size
    m["baselines"]["intensity"]["slice_auroc"] = intensity_auroc
    m["evaluated"] = "2000-01-01T00:00:00"
    path.write_text(json.dumps(m))
    cfg = json.loads((run / "config.json").read_text())
    cfg["preprocess"]["image_size"] = size
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def _baseline_auroc(at, label: str) -> str:
    table = at.dataframe[0].value
    return table.set_index("method").loc[label, "slice AUROC [95% CI]"].split(" ")[0]


def _dot_colour(at, run: str) -> str:
    """The colour of a run's operating point (and curve) in Compare's threshold component."""
    return next(m["colour"] for m in threshold_component(at)[0]["models"] if m["id"] == run)


def test_compare_baselines_and_colours_do_not_depend_on_the_selection(home):
    variant = _variant(home, "zz-small-size", 128, 0.111)
    try:
        own = f"{home_metrics(home)['baselines']['intensity']['slice_auroc']:.3f}"
        at = page(new_app(), "compare")
        at.multiselect(key="compare_runs").set_value([RUN]).run()
        assert _baseline_auroc(at, "intensity baseline") == own
        colour = _dot_colour(at, RUN)
        for order in ([variant.name, RUN], [RUN, variant.name]):  # the other run first, then second
            at.multiselect(key="compare_runs").set_value(order).run()
            assert not at.exception
            # each group of identical slices keeps its own baselines, labelled by what differs
            assert _baseline_auroc(at, "intensity baseline (64 px, flair)") == own
            assert _baseline_auroc(at, "intensity baseline (128 px, flair)") == "0.111"
            assert _dot_colour(at, RUN) == colour  # adding a run recolours nothing
        assert _dot_colour(at, variant.name) != colour
        assert "Metrics on demo cohort · test split" in [plain(h.value) for h in at.subheader]
    finally:
        shutil.rmtree(variant, ignore_errors=True)


def test_compare_per_case_table_report_and_config_diff(home):
    variant = _variant(home, "zz-diff-me", 128, 0.5)
    try:
        at = page(new_app(), "compare")
        at.multiselect(key="compare_runs").set_value([RUN]).run()
        cases = next(d.value for d in at.dataframe if "case_id" in d.value.columns)
        evaluated = home_metrics(home)["eval_cases"]
        assert list(cases.case_id) == evaluated and {"dice", "tumour_ml", "detected_ml", "slice_auroc"} <= set(cases.columns)
        assert (cases.tumour_ml > 0).any()
        assert any(plain(b.label) == f"Report: {RUN}" for b in at.download_button)
        at.selectbox(key="diff_a").set_value(RUN).run()
        at.selectbox(key="diff_b").set_value(variant.name).run()
        diff = next(d.value for d in at.dataframe if "key" in d.value.columns)
        assert list(diff.key) == ["preprocess.image_size"] and list(diff[f"B: {variant.name}"]) == ["128"]
    finally:
        shutil.rmtree(variant, ignore_errors=True)


def test_explore_opens_the_case_compare_asks_for(home, tmp_path, caplog):
    other = tmp_path / "two-cases"
    for c in ("BraTS2021_00001", "BraTS2021_00003"):
        shutil.copytree(home / "data" / "demo" / c, other / c)
    # A newer run listed first, so the run Explore would open by itself is not the box's first option.
    first = copy_run(home, "zzzz-listed-first", with_eval=False)
    folders.write_status(first, "cancelled", epoch=0, epochs=3, reason="received SIGTERM")
    at = new_app({"explore_request": {"run": RUN, "case": "BraTS2021_00003", "root": str(other)}})
    from streamlit.elements.lib import policies

    policies._shown_default_value_warning = False  # Streamlit warns once per process: arm it again
    policies._LOGGER.addHandler(caplog.handler)  # Streamlit's loggers do not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING):
            page(at, "explore")
    finally:
        policies._LOGGER.removeHandler(caplog.handler)
        shutil.rmtree(first, ignore_errors=True)
    # Issue 20 #5: the run and case boxes take the request's values without "created with a default value but
    # also had its value set via the Session State API".
    assert not [r for r in caplog.records if "default value" in r.getMessage()], [r.getMessage() for r in caplog.records]
    assert at.selectbox(key="explore_run").value == RUN
    assert at.selectbox(key=f"explore_case::{other.resolve()}").value == "BraTS2021_00003"
    assert at.session_state["data_root"] == str(other) and "explore_request" not in at.session_state


def test_explore_presets_come_from_the_active_dataset(home, tmp_path):
    """On the demo cohort the presets name it; on another folder there are none until the run is evaluated
    there, from the page, with thresholds calibrated on that folder's own healthy slices."""
    import json

    from uad.data import identity
    from uad.evaluation import summaries

    at = explore(new_app())
    assert "evaluation on **demo cohort · test split**" in texts(at)
    other = tmp_path / "one-case"
    shutil.copytree(home / "data" / "demo" / "BraTS2021_00000", other / "BraTS2021_00000")
    run = copy_run(home, "zz-explore-eval")
    try:
        at = explore(new_app({"data_root": str(other)}), run="zz-explore-eval")
        assert "has not been evaluated on the active dataset" in texts(at)
        assert viewer_spec(at)["threshold"]["presets"] == []
        at.button(key="evaluate::explore::zz-explore-eval").click().run()
        assert not at.exception, [e.value for e in at.exception]
        out = run / "eval" / identity.dataset_ref(other).id / "all"
        launch = json.loads((out / "launch.json").read_text())
        deadline = time.time() + 180
        while time.time() < deadline and processes.pid_alive(launch["pid"]):
            time.sleep(1)
        m = json.loads((out / "metrics.json").read_text())
        assert m["split"] == "all" and m["split_source"] == "external" and m["dataset"]["root"] == str(other.resolve())
        at = explore(new_app({"data_root": str(other)}), run="zz-explore-eval")
        assert f"evaluation on **{other.name} · all cases**" in texts(at)
        presets = viewer_spec(at)["threshold"]["presets"]
        assert [p["label"] for p in presets] == ["1%", "5%", "10%"]
        assert presets[1]["value"] == pytest.approx(summaries.EvaluationSummary.from_metrics(m).presets()[1][1])
    finally:
        shutil.rmtree(run, ignore_errors=True)

# -- Train: watching runs, the form, run management ------------------------------------------------------------
def _status_run(home: Path, name: str, state: str, **status) -> Path:

    run = copy_run(home, name, with_eval=False)
    (run / "status.json").unlink()
    folders.write_status(run, state, **status)
    return run


def _bar_texts(at) -> list[str]:
    return [plain(p.proto.text) for p in at.progress]


def test_train_shows_progress_within_the_epoch_with_an_eta(home):
    import re

    run = _status_run(home, "zz-running", "running", pid=os.getpid(), epoch=0, epochs=2, current_epoch=1, batch=40,
                      batches=120, eta=75.4, elapsed=30.0)
    try:
        at = page(new_app(), "train")
        (text,) = [t for t in _bar_texts(at) if t.startswith("epoch 1/2")]
        match = re.fullmatch(r"epoch 1/2 · batch 40/120 · ETA 1 min (\d+) s", text)
        assert match and int(match.group(1)) <= 15, text  # the trainer's 75 s, less the seconds since it wrote them
        bar = next(p for p in at.progress if plain(p.proto.text) == text)
        assert bar.proto.value == 16  # (40/120 of epoch 1) / 2 epochs, in percent
        assert at.button(key="cancel::zz-running") and at.button(key="delete::zz-running").disabled
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_train_says_how_each_run_ended(home):
    made = [
        _status_run(home, "zz-end-budget", "completed", epoch=1, epochs=2, reason="time budget",
                    end={"kind": "time_budget", "epoch": 2, "batch": 3, "batches": 10, "epochs": 2, "epochs_done": 1,
                         "max_minutes": 0.5}),
        _status_run(home, "zz-end-cancel", "cancelled", epoch=0, epochs=2, reason="received SIGTERM",
                    end={"kind": "cancelled", "epoch": 1, "batch": 5, "batches": 10, "epochs": 2, "epochs_done": 0,
                         "reason": "received SIGTERM"}),
        _status_run(home, "zz-end-failed", "failed", epoch=1, epochs=2, error="training diverged (loss became nan)",
                    end={"kind": "failed", "epoch": 2, "batch": 7, "batches": 10, "epochs": 2, "epochs_done": 1}),
    ]
    try:
        at = page(new_app(), "train")
        bars = _bar_texts(at)
        assert "stopped by its 0.5-min time budget in epoch 2/2 at batch 3/10" in bars
        assert "cancelled in epoch 1/2 at batch 5/10 (received SIGTERM)" in bars
        assert any("failed in epoch 2/2 at batch 7/10: training diverged (loss became nan)" in plain(e.value) for e in at.error)
        budget = next(p for p in at.progress if p.proto.text.startswith("stopped by"))
        assert budget.proto.value == 100  # it ran its whole budget: done, not "1 of 2 epochs"
        assert "completed 1/1 epochs" in bars  # the fixture run
    finally:
        for run in made:
            shutil.rmtree(run, ignore_errors=True)


def _chart(at, key: str) -> dict:
    """A plotly chart's figure and config as the browser receives them."""
    import json

    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key)]
    return {**json.loads(chart.proto.spec), "config": json.loads(chart.proto.config)}


def test_train_shows_step_losses_learning_rate_speed_and_samples(home):
    at = page(new_app(), "train")
    captions = [i.caption for im in at.image for i in im.proto.imgs]
    assert any(c.startswith("After epoch 1: input / reconstruction / |difference| (rows) of 4 fixed validation slices (BraTS")
               for c in captions), captions  # which slices they are, by case and source slice
    loss = _chart(at, f"loss::{RUN}")
    names = [t["name"] for t in loss["data"]]
    # TensorBoard's smoothing by default: the raw step line faint behind the smoothed one; epochs and validation raw.
    assert names == ["train loss (steps, raw)", "train loss (steps, smoothed 0.6)", "train loss (epoch)", "validation loss"]
    assert loss["layout"]["title"]["text"] == f"Loss · {RUN}" and "trained on uad demo cohort" in loss["layout"]["title"]["subtitle"]["text"]
    assert loss["config"]["toImageButtonOptions"]["filename"].startswith(f"loss_{RUN}_")  # not "loss" whatever the run
    rates = _chart(at, f"rates::{RUN}")
    assert [t["name"] for t in rates["data"]] == ["learning rate", "training slices/s"]
    assert rates["data"][0]["y"] == [1e-4] and rates["layout"]["yaxis"]["type"] == "log"

    at.slider(key="train_smoothing").set_value(0.0).run()
    at.toggle(key="train_log_y").set_value(True).run()
    loss = _chart(at, f"loss::{RUN}")
    assert [t["name"] for t in loss["data"]] == ["train loss (steps)", "train loss (epoch)", "validation loss"]
    assert loss["layout"]["yaxis"]["type"] == "log" and _chart(at, "train_overlay_chart")["layout"]["yaxis"]["type"] == "log"
    page(at, "overview")
    page(at, "train")  # the chart settings are kept across pages
    assert at.slider(key="train_smoothing").value == 0.0 and at.toggle(key="train_log_y").value is True
    # Light chart style: every chart white with dark text, on screen and in its download; the browser's charts too.
    at.segmented_control(key="figure_style").set_value("light").run()
    loss = _chart(at, f"loss::{RUN}")
    assert loss["layout"]["paper_bgcolor"] == "#FFFFFF" and loss["layout"]["title"]["text"] == f"Loss · {RUN}"
    assert threshold_component(page(at, "compare"))[0]["style"] == "light"


def test_train_chart_of_a_stopped_and_resumed_run_shows_each_epoch_once(home):
    """Issue #20 defect 6: cancelled mid-epoch 2, then resumed. The trainer records epoch 2 twice (partial, then
    in full) and its step positions restart at 1.0; the chart (and the overlay) draw each epoch once, forward only."""
    import json

    run = copy_run(home, "zz-resumed", with_eval=False)
    lines = [{"epoch": 1, "step": 10, "train": {"loss": 0.5}, "val_loss": 0.45, "slices_per_s": 90.0, "partial": False},
             {"epoch": 2, "step": 14, "train": {"loss": 0.42}, "val_loss": 0.44, "slices_per_s": 85.0, "partial": True,
              "batches": [4, 10]},
             {"epoch": 2, "step": 24, "train": {"loss": 0.40}, "val_loss": 0.38, "slices_per_s": 88.0, "partial": False},
             {"epoch": 3, "step": 34, "train": {"loss": 0.35}, "val_loss": 0.33, "slices_per_s": 91.0, "partial": False}]
    steps = [{"step": i, "epoch": round(p, 2), "steps": 2, "train": {"loss": 0.6 - p / 10}}
             for i, p in enumerate([0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0])]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    try:
        at = page(new_app(), "train")
        for trace in _chart(at, "loss::zz-resumed")["data"]:
            assert all(b > a for a, b in zip(trace["x"], trace["x"][1:])), (trace["name"], trace["x"])
        val = next(t for t in _chart(at, "loss::zz-resumed")["data"] if t["name"] == "validation loss")
        assert val["x"] == [1, 2, 3] and val["y"] == [0.45, 0.38, 0.33]  # the epoch as trained again, once
        assert any("records of epochs trained again after a stop are not drawn" in c.value for c in at.caption)
        at.multiselect(key="train_overlay").set_value(["zz-resumed"]).run()
        for curve in ("validation", "training"):
            at.segmented_control(key="train_overlay_curve").set_value(curve).run()
            for trace in _chart(at, "train_overlay_chart")["data"]:  # the smoothed line and its faint raw one
                assert all(b > a for a, b in zip(trace["x"], trace["x"][1:])), (curve, trace["x"])
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_train_steps_through_sample_reconstructions_by_epoch(home):
    run = copy_run(home, "zz-samples", with_eval=False)
    picture = (run / "samples" / "epoch-0001.png").read_bytes()
    for epoch in (2, 3):
        (run / "samples" / f"epoch-{epoch:04d}.png").write_bytes(picture)
    try:
        at = page(new_app(), "train")
        epochs = at.select_slider(key="samples_epoch::zz-samples")
        assert epochs.options == ["1", "2", "3"] and epochs.value == 3  # the latest first
        epochs.set_value(1).run()
        captions = [i.caption for im in at.image for i in im.proto.imgs]
        assert any(c.startswith("After epoch 1:") for c in captions) and not any(c.startswith("After epoch 3:") for c in captions)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_train_runs_table_has_hyper_parameters_filters_and_old_runs(home):
    """Every run with its settings, model options and results; the filter narrows the table and the cards.
    A run written before learning rates were recorded has no learning-rate curve and no error."""
    import json

    other = copy_run(home, "zz-dense-run", with_eval=False)
    cfg = json.loads((other / "config.json").read_text())
    cfg["train"]["lr"] = 3e-4
    cfg["hparams"]["bottleneck"] = "dense"
    (other / "config.json").write_text(json.dumps(cfg))
    run_meta.update_meta(other, name="Dense AE", tags=["sweep"])
    old = [{k: v for k, v in r.items() if k != "lr"} for r in folders.read_metrics(other)]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    try:
        at = page(new_app(), "train")
        table = next(d.value for d in at.dataframe if "bottleneck" in d.value.columns)
        rows = table.set_index("folder")
        assert rows.loc["zz-dense-run", "bottleneck"] == "dense" and rows.loc[RUN, "bottleneck"] == "unet"
        assert rows.loc["zz-dense-run", "lr"] == 3e-4 and rows.loc["zz-dense-run", "run"] == "Dense AE"
        assert rows.loc[RUN, "best val loss"] == pytest.approx(min(r["val_loss"] for r in folders.read_metrics(home / "runs" / RUN)))
        assert {"latent dim", "batch", "size", "input", "seed", "slices/s", "status", "tags"} <= set(table.columns)
        rates = _chart(at, "rates::zz-dense-run")
        assert [t["name"] for t in rates["data"]] == ["training slices/s"]  # no learning rate recorded: no curve

        at.text_input(key="train_filter").input("sweep").run()
        table = next(d.value for d in at.dataframe if "bottleneck" in d.value.columns)
        assert list(table.folder) == ["zz-dense-run"]
        assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"loss::{RUN}")]  # its card is filtered out
        at.text_input(key="train_filter").input("").run()
        at.multiselect(key="train_filter_states").set_value(["completed"]).run()
        assert {RUN, "zz-dense-run"} <= set(next(d.value for d in at.dataframe if "bottleneck" in d.value.columns).folder)
        at.text_input(key="train_filter").input("sweep no-such-word").run()  # every word must match
        assert any(c.value == "No run matches the filter." for c in at.caption)
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_train_overlays_several_runs(home):
    import json

    def traces(at) -> list[str]:
        (chart,) = [c for c in at.get("plotly_chart") if c.proto.id.endswith("train_overlay_chart")]
        return [t["name"] for t in json.loads(chart.proto.spec)["data"] if t.get("showlegend") is not False]  # not the faint raw lines

    other = copy_run(home, "zz-overlay")
    try:
        at = page(new_app(), "train")
        pick = at.multiselect(key="train_overlay")
        assert pick.value == ["zz-overlay", RUN] and traces(at) == ["zz-overlay", RUN]  # the newest two by default
        at.segmented_control(key="train_overlay_curve").set_value("training").run()
        assert traces(at) == ["zz-overlay (loss)", f"{RUN} (loss)"]
        at.multiselect(key="train_overlay").set_value([RUN]).run()
        assert not at.exception and traces(at) == [f"{RUN} (loss)"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_train_form_offers_choices_and_describes_models_from_uad(home):
    from uad.models import AnomalyModel, model_description, registry

    class Toy(AnomalyModel):
        """A toy model registered by this test."""

        name = "zz_toy"

        def __init__(self, in_channels: int = 1, image_size: int = 128, flavour: Literal["plain", "fancy"] = "plain"):
            super().__init__(in_channels, image_size, flavour=flavour)

    registry.register_model()(Toy)
    try:
        at = page(new_app(), "train")
        labels = at.selectbox(key="train_model").options
        assert f"vit — {model_description('vit')}" in labels
        assert "zz_toy — A toy model registered by this test." in labels  # no app change for a new model
        at.selectbox(key="train_model").set_value("autoencoder").run()
        bottleneck = at.selectbox(key="opt::autoencoder::bottleneck")
        assert bottleneck.options == ["spatial", "dense", "unet"] and bottleneck.value == "unet"
        assert at.selectbox(key="opt::autoencoder::norm").options == ["batch", "group", "layer", "none"]
        at.selectbox(key="train_model").set_value("zz_toy").run()
        assert at.selectbox(key="opt::zz_toy::flavour").options == ["plain", "fancy"]
    finally:
        registry._REGISTRY.pop("zz_toy", None)


def test_train_form_keeps_its_values_across_pages(home):
    at = page(new_app(), "train")
    at.selectbox(key="train_model").set_value("autoencoder").run()
    at.selectbox(key="opt::autoencoder::bottleneck").set_value("dense").run()
    at.number_input(key="train_epochs").set_value(3).run()
    at.select_slider(key="train_size").set_value(96).run()
    at.text_input(key="train_name").input("keep me").run()
    page(at, "overview")
    assert "train_epochs" not in at.session_state  # Streamlit dropped the widget's own state off-page
    page(at, "train")
    assert at.selectbox(key="train_model").value == "autoencoder"
    assert at.selectbox(key="opt::autoencoder::bottleneck").value == "dense"
    assert at.number_input(key="train_epochs").value == 3 and at.select_slider(key="train_size").value == 96
    assert at.text_input(key="train_name").value == "keep me"


@pytest.mark.parametrize(
    "model, key, value, expected",
    [
        ("vit", "opt::vit::patch_size", 24, "patch_size 24 must divide image_size 128"),
        ("autoencoder", "train_tags", "a,b", "without spaces or commas"),
    ],
    ids=["model-check", "tag"],
)
def test_train_rejects_a_bad_value_before_anything_starts(home, model, key, value, expected):
    before = sorted(p.name for p in (home / "runs").iterdir())
    at = page(new_app(), "train")
    at.selectbox(key="train_model").set_value(model).run()
    widget = at.text_input(key=key) if key == "train_tags" else at.number_input(key=key)
    widget.set_value(value).run()
    click(at, "Start training")
    assert not at.exception
    assert any(plain(e.value).startswith("Cannot start: ") and expected in plain(e.value) for e in at.error), [plain(e.value) for e in at.error]
    assert sorted(p.name for p in (home / "runs").iterdir()) == before  # no run folder left behind


def test_train_form_numbers_are_bounded_as_the_models_declare(home):
    """Every numeric model option is a number input whose min and max are the bounds its constructor declares."""
    from uad.models import list_models, model_options

    at = page(new_app(), "train")
    for model in list_models():
        at.selectbox(key="train_model").set_value(model).run()
        for name, opt in model_options(model).items():
            if opt.type in (int, float) and not opt.choices:
                widget = at.number_input(key=f"opt::{model}::{name}")
                assert (widget.min, widget.max) == (opt.low, opt.high), (model, name)
                assert opt.low is not None, f"{model} {name}: a numeric option without declared bounds"


def test_train_name_tag_note_archive_restore_and_delete_a_run(home):

    run = copy_run(home, "zz-manage", with_eval=False)
    archived = home / "runs" / ".archive" / "zz-manage"
    try:
        at = page(new_app(), "train")
        at.text_input(key="meta_name::zz-manage").input("Baseline AE")
        at.text_input(key="meta_tags::zz-manage").input("flair small")
        at.text_area(key="meta_note::zz-manage").input("lr 1e-3, one epoch")
        at.button(key="meta_save::zz-manage").click().run()
        assert not at.exception
        assert run_meta.read_meta(run) == {"name": "Baseline AE", "tags": ["flair", "small"], "note": "lr 1e-3, one epoch"}
        shown = texts(at)
        assert "**Baseline AE** ` zz-manage `" in shown and ":violet-badge[flair]" in shown and "lr 1e-3, one epoch" in shown

        at.button(key="archive::zz-manage").click().run()
        assert not run.exists() and archived.is_dir()
        assert "Archived runs (1)" in [e.label for e in at.expander]
        at.button(key="restore::zz-manage").click().run()
        assert run.is_dir() and not archived.exists()

        at.button(key="delete::zz-manage").click().run()
        assert run.is_dir() and any("for good?" in plain(w.value) for w in at.warning)  # asks first
        at.button(key="delete_no::zz-manage").click().run()
        assert run.is_dir()
        at.button(key="delete::zz-manage").click().run()
        at.button(key="delete_yes::zz-manage").click().run()
        assert not at.exception and not run.exists()
        assert "zz-manage" not in texts(at)
    finally:
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(archived, ignore_errors=True)


# -- Overview ------------------------------------------------------------------------------------------------
def _overview_details(at, row: int) -> dict[str, str]:
    """The details the Overview shows when its ``row`` is selected."""
    at.session_state["overview_runs"] = {"selection": {"rows": [row], "columns": []}}
    at.run()
    details = next(d.value for d in at.dataframe if "value" in d.value.columns)
    return dict(zip(details.iloc[:, 0], details.value))


def test_overview_progress_status_and_unevaluated_runs(home, tmp_path, monkeypatch):
    import json

    from uad.core import paths

    shipped = tmp_path / "shipped"
    shutil.copytree(home / "shipped" / SHIPPED, shipped / "gan")
    # As the shipped f-AnoGAN: trained for its whole 3.8-min budget, 87 of an upper bound of 5000 epochs.
    fileio.write_json(shipped / "gan" / "status.json", {"state": "completed", "epoch": 87, "epochs": 5000,
                                                         "reason": "time budget"})  # uad never writes there
    monkeypatch.setattr(paths, "checkpoints_dir", lambda: shipped)
    pending = copy_run(home, "zz-not-evaluated", with_eval=False)
    try:
        at = new_app()
        table = at.dataframe[0]
        df = table.value
        gan = df[df.run == "gan"].iloc[0]
        assert gan.status == "time budget"
        row = df[df.run == "zz-not-evaluated"].iloc[0]
        assert row.status == "completed" and row["evaluated on"] == "–"
        assert np.isnan(row["slice AUROC"]) and table.proto.placeholder == "–"  # shown as "–", not "None"
        assert "– = not evaluated yet" in texts(at)
        columns = json.loads(table.proto.columns)
        assert all(isinstance(columns[c].get("width"), int) for c in df.columns)  # every column sized, none cut
        assert columns["run"]["width"] >= 7 * max(len(r) for r in df.run)  # the longest name fits
        assert columns["run"].get("pinned") is True
        # What the numbers are and where they come from, side by side: no scrolling to find "evaluated on".
        assert list(df.columns) == ["run", "status", "evaluated on", "slice AUROC", "pixel AP", "best Dice*", "Dice @5 % FPR"]
        assert sum(columns[c]["width"] for c in df.columns) <= OVERVIEW_WIDTH_AT_1280
        details = _overview_details(at, int(np.flatnonzero(df.run == "gan")[0]))
        assert details["epochs"] == "87/5000" and details["source"] == "shipped checkpoint"
        assert details["trained on"] and details["evaluated on"] == "demo cohort · test split"
    finally:
        shutil.rmtree(pending, ignore_errors=True)


# -- labels are text (issue #17 E) and a damaged run folder hides no other (issue #17 G) --------------------------
HOSTILE = "http://127.0.0.1:9/"


def hostile_run(home: Path, name: str = "zz-hostile") -> Path:
    """A copy of the fixture run whose every label a user or a file supplies is Markdown and HTML that would
    fetch an address or draw a link if rendered: model name (config.json), run name, tags and note (meta.json)."""
    import json

    run = copy_run(home, name)
    config = json.loads((run / "config.json").read_text())
    config["model"] = f"<img src={HOSTILE}m.png>"
    (run / "config.json").write_text(json.dumps(config))
    (run / "meta.json").write_text(json.dumps({
        "name": f"[Sign in again]({HOSTILE}login) ![n]({HOSTILE}n.png)",
        "tags": [f"![t]({HOSTILE}t.png)", "<b>bold</b>"],
        "note": f"<img src='{HOSTILE}note.png'> [Sign in again]({HOSTILE}login) **x** :red[red] $x$",
    }))
    return run


def markdown_bodies(at) -> list[str]:
    """Every string the app handed to Streamlit to render as Markdown: bodies, labels and help texts."""
    out = []
    for group in (at.markdown, at.caption, at.error, at.warning, at.info, at.success, at.title, at.subheader, at.toast):
        out += [str(e.value) for e in group]
    for group in (at.button, at.selectbox, at.multiselect, at.text_input, at.number_input, at.checkbox, at.slider,
                  at.expander, at.text_area, at.toggle):
        for e in group:
            out += [str(getattr(e, "label", "") or ""), str(getattr(e, "help", "") or "")]
    return out


def unescaped(bodies: list[str]) -> list[str]:
    """Bodies in which a hostile label would render as a link, an image, HTML or a Streamlit directive: the
    character that starts it is not backslash-escaped (a backslash-escaped one renders as itself)."""
    import re

    starts = re.compile(r"(?<!\\)\]\(http|(?<!\\)<img|(?<!\\)<b>|(?<!\\):red\[|(?<!\\)\*\*x"
                        r"|http\\?:")  # a bare address is made a link unless something stands between scheme and ":"
    return [b for b in bodies if starts.search(b)]


@pytest.mark.parametrize("name", ["overview", "train", "explore", "compare"])
def test_labels_from_users_and_files_reach_the_page_as_text(home, name):
    run = hostile_run(home)
    try:
        at = new_app({"explore_run": run.name} if name == "explore" else None)
        at = page(at, name)
        if name == "train":
            if any(t.key == "train_show_all" for t in at.toggle):  # only when there are more runs than a page shows
                at.toggle(key="train_show_all").set_value(True).run()
        if name == "compare":
            at.multiselect(key="compare_runs").set_value([RUN, run.name]).run()
        bodies = markdown_bodies(at)
        assert not unescaped(bodies), unescaped(bodies)
        shown = "\n".join(bodies)
        if name in ("train",):
            assert "Sign in again" in shown  # the name and note are shown, as text
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_a_damaged_run_folder_is_named_and_hides_no_run(home):
    broken = copy_run(home, "zz-broken", with_eval=False)
    (broken / "status.json").write_text('{"state": "running", "pid": "x"}')
    try:
        for name in ("overview", "train", "explore", "compare"):
            at = page(new_app(), name)
            assert not any("No run yet" in str(e.value) or "No run with a checkpoint" in str(e.value) for e in at.info), name
            shown = [w.value.replace("\\", "") for w in at.warning]  # escaped Markdown, read as its text
            assert any("zz-broken" in w and "status.json" in w for w in shown), (name, shown)
        at = page(new_app(), "overview")
        assert RUN in texts(at) or RUN in str(at.dataframe[0].value)
    finally:
        shutil.rmtree(broken, ignore_errors=True)


OVERVIEW_WIDTH_AT_1280 = 820  # px beside the sidebar in a 1280-px window (measured in Chromium, tests/test_browser.py)


def test_overview_names_where_each_rows_numbers_come_from(home, tmp_path):
    """Issue #20 defect 4: a run evaluated only on another folder shows that folder's numbers, and the page says
    so: its row names the folder, and the caption no longer claims every number is from the run's own data."""
    import json

    from uad.data import identity

    other_root = tmp_path / "other-site"
    shutil.copytree(home / "data" / "demo" / "BraTS2021_00001", other_root / "BraTS2021_00001")
    run = copy_run(home, "zz-elsewhere")
    ref = identity.dataset_ref(other_root)
    moved = run / "eval" / ref.id / "all"
    moved.parent.mkdir(parents=True)
    shutil.move(str(run / "eval" / "demo" / "test"), str(moved))
    m = json.loads((moved / "metrics.json").read_text())
    m["dataset"], m["split"], m["data_root"] = ref.to_dict(), "all", str(other_root)
    m["slice_auroc"] = 0.123
    (moved / "metrics.json").write_text(json.dumps(m))
    try:
        at = new_app()
        df = at.dataframe[0].value
        row = df[df.run == "zz-elsewhere"].iloc[0]
        assert row["evaluated on"] == f"{ref.label} · all cases" and row["slice AUROC"] == pytest.approx(0.123)
        caption = texts(at)
        assert "Metrics come from each run's evaluation on its own training data" not in caption
        assert "otherwise its newest, on whatever dataset that was" in caption
    finally:
        shutil.rmtree(run, ignore_errors=True)
