"""Issue #17, each fault done for real: a full disk (a small tmpfs), damaged bytes in the cache, a planted
pid, a damaged or hostile run file, a kill -9 mid-delete, an evaluation running while its run is
archived, read-only folders (a read-only bind mount), other patients under the same ids, a 250-character
folder name, a header claiming a huge volume. Each test fails on the code before its fix.

Mounting needs root: without it those tests skip (CI runs as root).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BRATS_AFFINE, phantom, write_case

from uad import cli
from uad.core import fileio, paths, processes
from uad.data import store as store_mod
from uad.data.preprocess import PreprocessConfig
from uad.jobs import run_jobs
from uad.runs import folders
from uad.runs import meta as run_meta

REPO = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------------------------------
def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """``make(kib)``: a fresh tmpfs of that size (a disk that fills up for real)."""
    mounted = []

    def make(kib: int, name: str = "disk") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if not _mount(["-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)]):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def read_only():
    """``make(folder)``: the folder becomes read-only (a read-only bind mount of itself), for root too."""
    mounted = []

    def make(folder: Path) -> Path:
        if not (_mount(["--bind", str(folder), str(folder)])):
            pytest.skip("cannot bind-mount here (needs root)")
        mounted.append(folder)
        if not _mount(["-o", "remount,bind,ro", str(folder)]):
            pytest.skip("cannot remount read-only here")
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fails(argv: list[str], capsys, *expected: str) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


def _fake_run(name: str, state: str = "completed", root: Path | None = None, **status) -> Path:
    run = (root or paths.runs_dir()) / name
    run.mkdir(parents=True)
    fileio.write_json(run / "config.json", {"model": "autoencoder", "train": {"epochs": 2}})
    fileio.write_json(run / "status.json", {"state": state, "epoch": 2, "epochs": 2, **status})
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-case phantom cohort and a 1-epoch autoencoder (64 px) trained on it, built once for this module."""
    base = tmp_path_factory.mktemp("trust-run")
    env = dict(os.environ, UAD_HOME=str(base / "home"))
    env.pop("UAD_CACHE_DIR", None)
    root = base / "cohort"
    for i in range(6):
        vols, seg = phantom(seed=i, tumour=i % 2 == 0)
        write_case(root, f"BraTS2021_{i:05d}", vols, seg)
    run = base / "run"
    proc = subprocess.run([sys.executable, "-m", "uad", "train", "--model", "autoencoder", "--data", str(root),
                           "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--base-channels", "4",
                           "--out", str(run), "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, run


def _copy_run(run: Path, name: str = "20250101-000000-autoencoder") -> Path:
    dst = paths.runs_dir() / name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("eval", "run.lock", "eval.lock"))
    return dst


# -- A: a full disk while caching ---------------------------------------------------------------------------------
def test_a_full_cache_disk_stops_with_the_disk_full_error_and_keeps_nothing_half_built(make_cohort, tmpfs, capsys,
                                                                                        monkeypatch):
    root = make_cohort(6)
    disk = tmpfs(700)  # room for about two of the six cases
    monkeypatch.setenv("UAD_CACHE_DIR", str(disk))
    entry = store_mod.store_dir(root, PreprocessConfig(image_size=64))
    for argv in (["prepare", "--data", str(root), "--image-size", "64", "--workers", "1"],
                 ["train", "--model", "autoencoder", "--data", str(root), "--image-size", "64", "--epochs", "1",
                  "--out", str(paths.runs_dir() / "r"), "--no-progress"]):
        err = _fails(argv, capsys, "disk full", str(entry / "cases"))
        assert "skipped" not in err
        assert not (entry / "manifest.json").exists()  # never reads as a built cache
        leftovers = [p.name for p in (entry / "cases").iterdir() if p.name.startswith(".")]
        assert leftovers == []  # no partial case
        for case in (entry / "cases").iterdir():  # what is there is whole
            assert store_mod.entry_problem(case, store_mod._read_meta(case), full=True) is None
    status = folders.read_status(paths.runs_dir() / "r")
    assert status["state"] == "failed" and "disk full" in status["error"]


def test_a_full_disk_during_a_checkpoint_save_names_the_file(make_cohort, tmpfs, capsys):
    root = make_cohort(3)
    disk = tmpfs(400)  # config and logs fit, a checkpoint does not
    err = _fails(["train", "--model", "autoencoder", "--data", str(root), "--image-size", "64", "--epochs", "1",
                  "--out", str(disk / "run"), "--no-progress"], capsys, "disk full")
    assert f"{disk / 'run' / 'last'}" in err and ("model.safetensors" in err or "training_state" in err), err
    assert not any(p.name.startswith("last.") for p in (disk / "run").iterdir())  # no half-written checkpoint


# -- F: damage in the middle of the slice cache ------------------------------------------------------------------------
def test_nan_in_the_middle_of_a_cached_case_is_found_and_rebuilt(make_cohort, caplog, capsys):
    root = make_cohort(2)
    config = PreprocessConfig(image_size=128)  # images.npy far larger than the two 64 KiB ends
    store = store_mod.build_store(root, config, workers=1, progress=False)
    cid = store.case_ids[0]
    good = np.array(store.case(cid).images)
    images = store.root / "cases" / cid / "images.npy"
    data = bytearray(images.read_bytes())
    assert len(data) > 3 * 65536
    middle = len(data) // 2
    data[middle:middle + 40_000] = np.full(20_000, np.nan, np.float16).tobytes()
    images.write_bytes(bytes(data))
    del store
    # Reading a case in a new process checks every byte and rebuilds it from its source.
    with caplog.at_level("WARNING", logger="uad.data.store"):
        again = store_mod.SliceStore(store_mod.store_dir(root, config))
        np.testing.assert_array_equal(again.case(cid).images, good)
    assert "its SHA-1 differs" in caplog.text and "rebuilding it" in caplog.text
    # prepare checks in full too.
    data = bytearray(images.read_bytes())
    data[middle:middle + 40_000] = np.full(20_000, np.nan, np.float16).tobytes()
    images.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level("WARNING", logger="uad.data.store"):
        assert cli.main(["prepare", "--data", str(root), "--image-size", "128", "--workers", "1"]) == 0
    assert "its SHA-1 differs" in caplog.text
    assert np.isfinite(np.load(images)).all()


# -- D: runs cancel never signals another process ---------------------------------------------------------------------
def test_cancel_never_signals_a_process_that_is_not_the_runs_trainer(capsys):
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a live, unrelated process group
    try:
        run = _fake_run("victim", "running", pid=victim.pid)  # a planted (or stale) pid
        capsys.readouterr()
        assert cli.main(["runs", "cancel", "victim"]) == 0
        out = capsys.readouterr().out
        time.sleep(0.5)
        assert victim.poll() is None, "the unrelated process was killed"
        assert "Not signalled" in out and folders.read_status(run)["state"] == "cancelled"
        # Its start time forged too: still not a uad trainer, still not signalled.
        fileio.write_json(run / "status.json", {"state": "running", "pid": victim.pid,
                                                "pid_start": processes.process_start(victim.pid)})
        assert cli.main(["runs", "cancel", "victim"]) == 0
        time.sleep(0.5)
        assert victim.poll() is None
        # The app's Cancel button calls the same function.
        fileio.write_json(run / "status.json", {"state": "running", "pid": victim.pid})
        assert run_jobs.cancel_run(run).startswith("Not signalled")
        time.sleep(0.5)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_cancel_signals_the_recorded_trainer(capsys):
    # Stands in for a trainer: its command line holds "uad train", its pid and start time are recorded.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "uad", "train"], start_new_session=True)
    try:
        deadline = time.time() + 10
        while processes.process_command(proc.pid) in (None, []) and time.time() < deadline:
            time.sleep(0.05)
        _fake_run("real", "running", pid=proc.pid, pid_start=processes.process_start(proc.pid))
        assert cli.main(["runs", "cancel", "real"]) == 0
        assert "Cancel requested" in capsys.readouterr().out
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()


# -- G: one bad run folder hides no other run ------------------------------------------------------------------------
@pytest.mark.parametrize("name, content", [
    ("status.json", {"state": "running", "pid": "x"}),
    ("config.json", {"model": "autoencoder", "train": "zz"}),
    ("status.json", {"state": "completed", "epochs": "zz"}),
    ("status.json", {"state": "completed", "end": {"kind": "completed", "batch": [1]}}),
    ("meta.json", {"name": ["x"]}),
    ("meta.json", {"tags": ["two words"]}),
    ("config.json", "[1, 2"),
    ("status.json", [1, 2]),
], ids=["pid", "train", "epochs", "end", "name", "tag", "torn", "list"])
def test_one_damaged_run_folder_is_skipped_by_name_and_hides_no_other(capsys, name, content):
    good = _fake_run("20250101-000001-autoencoder")
    bad = _fake_run("20250101-000002-autoencoder")
    (bad / name).write_text(content if isinstance(content, str) else json.dumps(content))
    capsys.readouterr()
    assert cli.main(["runs", "list"]) == 0
    captured = capsys.readouterr()
    assert good.name in captured.out and bad.name not in captured.out
    assert f"skipped {bad}" in captured.err and name in captured.err and "Traceback" not in captured.err
    skipped: list = []
    views = run_jobs.list_run_views(include_shipped=True, skipped=skipped)
    assert [v.path for v in views if not v.info.shipped] == [good]
    assert any(v.info.shipped for v in views)  # the shipped checkpoints are still listed
    assert [s.path for s in skipped] == [bad]
    # A damaged run can still be deleted (the user may want exactly that).
    assert cli.main(["runs", "delete", str(bad), "--yes"]) == 0 and not bad.exists()


# -- C and P: shipped checkpoints are never written; uad runs acts only under runs/ ----------------------------------
def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_shipped_checkpoints_are_never_written(tmp_path, monkeypatch, capsys):
    ships = tmp_path / "ckpts"
    shutil.copytree(REPO / "checkpoints" / "autoencoder", ships / "autoencoder", ignore=shutil.ignore_patterns("eval"))
    (ships / "autoencoder" / "last").mkdir()  # as if it could be resumed
    shutil.copy(ships / "autoencoder" / "best" / "checkpoint.json", ships / "autoencoder" / "last")
    monkeypatch.setenv("UAD_CHECKPOINTS", str(ships))
    shipped = ships / "autoencoder"
    before = _tree(ships)
    _fails(["train", "--resume", str(shipped), "--epochs", "41"], capsys, "shipped checkpoint", "never resumed")
    _fails(["train", "--model", "autoencoder", "--out", str(shipped / "x")], capsys, "shipped checkpoint")
    for argv in (["rename", "autoencoder", "X"], ["tag", "autoencoder", "t"], ["note", "autoencoder", "n"],
                 ["resume", "autoencoder"], ["cancel", "autoencoder"], ["archive", "autoencoder"],
                 ["delete", "autoencoder", "--yes"]):
        _fails(["runs", *argv], capsys, "shipped checkpoint")
    with pytest.raises(Exception, match="shipped checkpoint"):
        run_meta.update_meta(shipped, name="X")
    assert _tree(ships) == before  # no status.json, run.lock, train.log or meta.json written


def test_uad_runs_acts_only_on_folders_directly_under_runs(tmp_path, capsys):
    outside = _fake_run("run", "cancelled", root=tmp_path / "outside")
    (outside / "last").mkdir()
    (outside / "last" / "checkpoint.json").write_text("{}")  # resumable, as far as the listing can tell
    before = _tree(outside)
    for argv in (["rename", str(outside), "X"], ["resume", str(outside)], ["tag", str(outside), "t"],
                 ["note", str(outside), "n"], ["cancel", str(outside)], ["archive", str(outside)]):
        _fails(["runs", *argv], capsys, "works only on folders directly under")
    assert _tree(outside) == before


# -- L: kill -9 during runs delete ------------------------------------------------------------------------------------
def test_a_delete_killed_midway_is_listed_and_finished(capsys):
    env = dict(os.environ, UAD_HOME=os.environ["UAD_HOME"])
    for attempt, files in enumerate((4000, 20000, 60000)):
        run = _fake_run(f"20250101-00000{attempt}-autoencoder")
        for i in range(files // 100):
            sub = run / "eval" / f"d{i}"
            sub.mkdir(parents=True)
            for j in range(100):
                (sub / f"f{j}").write_bytes(b"x" * 64)
        proc = subprocess.Popen([sys.executable, "-m", "uad", "runs", "delete", run.name, "--yes"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        doomed = None
        deadline = time.time() + 60
        while doomed is None and proc.poll() is None and time.time() < deadline:
            doomed = next(iter(paths.runs_dir().glob(f".deleting-{run.name}-*")), None)
        if doomed is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # mid-delete
            proc.wait()
            break
        proc.wait()
    else:
        pytest.skip("the delete finished before it could be killed, every time")
    assert doomed.exists()
    capsys.readouterr()
    assert cli.main(["runs", "list"]) == 0
    err = capsys.readouterr().err
    assert f"finished deleting {doomed}" in err and "interrupted" in err
    assert not doomed.exists()


# -- K: archiving a run while it is evaluated -------------------------------------------------------------------------
def test_archiving_a_run_while_it_is_evaluated_is_refused(trained, monkeypatch, capsys):
    from uad.evaluation import evaluate as evaluate_mod

    _, trained_run = trained
    run = _copy_run(trained_run)
    started, go = threading.Event(), threading.Event()
    real = evaluate_mod.score_cohort

    def slow(*args, **kwargs):
        started.set()
        assert go.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "score_cohort", slow)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("m", evaluate_mod.evaluate(run, n_boot=0, progress=False)))
    worker.start()
    try:
        assert started.wait(120)
        _fails(["runs", "archive", run.name], capsys, "being evaluated")
        _fails(["runs", "delete", run.name, "--yes"], capsys, "being evaluated")
        assert run.is_dir()
    finally:
        go.set()
        worker.join(120)
    assert "m" in result
    assert cli.main(["runs", "archive", run.name]) == 0
    assert not run.exists()  # no orphan eval/ left behind
    assert cli.main(["runs", "restore", run.name]) == 0
    assert (run / "eval").is_dir()


# -- J: other patients under the same ids -----------------------------------------------------------------------------
def test_other_patients_under_the_recorded_ids_are_not_scored_as_the_recorded_split(trained, tmp_path, capsys):
    root, trained_run = trained
    run = _copy_run(trained_run)
    other = tmp_path / "other"  # same ids, other patients (other phantoms: other file sizes)
    for i in range(6):
        vols, seg = phantom(seed=100 + i, tumour=i % 2 == 0)
        write_case(other, f"BraTS2021_{i:05d}", vols, seg)
    err = _fails(["evaluate", "--run", str(run), "--data", str(other), "--bootstrap", "0"], capsys,
                 "differ from the recorded test patients", "--split all")
    test_ids = json.loads((run / "best" / "checkpoint.json").read_text())["split"]["cases"]["test"]
    assert all(cid in err for cid in test_ids)
    assert cli.main(["evaluate", "--run", str(run), "--data", str(other), "--split", "all", "--bootstrap", "0"]) == 0
    copy = tmp_path / "copy"  # the same patients elsewhere: still the recorded test split
    shutil.copytree(root, copy)
    assert cli.main(["evaluate", "--run", str(run), "--data", str(copy), "--bootstrap", "0"]) == 0
    metrics = json.loads(next((run / "eval").glob("copy-*/test/metrics.json")).read_text())
    assert metrics["split_source"] == "recorded"


# -- M: read-only cache, run and output folders -----------------------------------------------------------------------
def test_read_only_folders_are_read_without_writing_or_refused_clearly(trained, tmp_path, read_only, capsys, monkeypatch):
    root, trained_run = trained
    run = _copy_run(trained_run)
    assert cli.main(["prepare", "--data", str(root), "--image-size", "64", "--workers", "1"]) == 0
    cache = paths.cache_dir()
    read_only(cache)
    # An up-to-date read-only cache is read as it is: prepare, evaluate (output elsewhere) and score work.
    assert cli.main(["prepare", "--data", str(root), "--image-size", "64", "--workers", "1"]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--bootstrap", "0", "--out", str(tmp_path / "ev")]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--bootstrap", "0"]) == 0
    case = root / "BraTS2021_00000"
    assert cli.main(["score", "--run", str(run), "--case", str(case), "--out", str(tmp_path / "maps")]) == 0
    # A read-only run folder: read it, write nothing, refuse what would write into it.
    read_only(run)
    assert cli.main(["score", "--run", str(run), "--case", str(case), "--out", str(tmp_path / "maps2")]) == 0
    _fails(["evaluate", "--run", str(run), "--bootstrap", "0", "--data", str(root), "--split", "all"], capsys,
           "read-only", str(run / "eval"))
    _fails(["train", "--resume", str(run), "--epochs", "2"], capsys, str(run), "cannot write")
    assert cli.main(["runs", "list"]) == 0
    # Read-only output folders: one clear line naming them.
    out = tmp_path / "ro-out"
    out.mkdir()
    read_only(out)
    _fails(["score", "--run", str(run), "--case", str(case), "--out", str(out)], capsys, "read-only", str(out))
    _fails(["report", "--run", str(run), "--out", str(out / "r.html"), "--no-examples"], capsys, "read-only", str(out))
    assert cli.main(["report", "--run", str(run), "--out", str(tmp_path / "r.html"), "--no-examples"]) == 0


# -- N: a 250-character folder name -------------------------------------------------------------------------------------
def test_a_250_character_dataset_folder_name_works(trained, tmp_path, capsys):
    root, trained_run = trained
    run = _copy_run(trained_run)
    long_root = tmp_path / ("d" * 250)
    shutil.copytree(root, long_root)
    assert cli.main(["prepare", "--data", str(long_root), "--image-size", "64", "--workers", "1"]) == 0
    assert cli.main(["evaluate", "--run", str(run), "--data", str(long_root), "--split", "all", "--bootstrap", "0"]) == 0
    assert all(len(p.name) <= 255 for p in paths.home().rglob("*"))
    assert any(p.name == "metrics.json" for p in (run / "eval").rglob("*"))


# -- a header claiming a huge volume is refused before any voxel is read -------------------------------------------------
def test_every_header_is_checked_before_any_voxel_is_read(tmp_path):
    """A 1 MB gzip of zeros whose header claims 512 x 512 x 320 float64 (640 MB), beside a seg on another grid:
    the mismatch is found from the headers, not after reading the volume."""
    case = tmp_path / "BraTS2021_00000"
    vols, seg = phantom()
    write_case(tmp_path, case.name, {}, seg)  # the seg: 48 x 48 x 24
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 320))
    header.set_data_dtype(np.float64)
    header.set_qform(BRATS_AFFINE, 1)
    header.set_sform(BRATS_AFFINE, 1)
    with gzip.open(case / f"{case.name}_flair.nii.gz", "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\0" * (352 - len(header.binaryblock)))
        zeros = b"\0" * (1 << 24)
        for _ in range(512 * 512 * 320 * 8 // len(zeros)):
            fh.write(zeros)
    code = ("import resource, sys\n"
            "from uad.data.cases import discover_cases\nfrom uad.data.volumes import load_case\n"
            "from uad.core.errors import DataError\n"
            f"(case,), _ = discover_cases({str(tmp_path)!r})\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_case(case, ['flair'])\nexcept DataError as exc:\n    print('ERR', exc)\n"
            "print('PEAK_MB', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300).stdout
    assert "ERR" in out and "differs from" in out, out
    peak = float(out.split("PEAK_MB")[1])
    assert peak < 100, f"read {peak:.0f} MB before refusing"


# -- O: evaluation and scoring flags out of bounds ----------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "--run", "X", "--bootstrap", "-5"], "--bootstrap must be between 0"),
    (["evaluate", "--run", "X", "--median", "-3"], "--median must be a whole number from 0 to 15"),
    (["evaluate", "--run", "X", "--median", "4"], "--median must be odd"),
    (["evaluate", "--run", "X", "--erode", "-1"], "--erode must be a whole number from 0 to 32"),
    (["evaluate", "--run", "X", "--score-percentile", "nan"], "--score-percentile must be a number in (0, 100]"),
    (["score", "--run", "X", "--case", "Y", "--out", "Z", "--min-component", "-2"], "--min-component must be a whole number from 0"),
])
def test_out_of_bounds_evaluation_flags_are_refused_before_anything_runs(argv, expected, capsys, tmp_path):
    argv = [str(tmp_path / a) if a in ("X", "Y", "Z") else a for a in argv]
    _fails(argv, capsys, expected)
    assert not any(tmp_path.iterdir())  # nothing was written
