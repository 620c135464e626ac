"""Command-line arguments a user can get wrong: one line on stderr and exit code 2, never a traceback.

The commands get real inputs (a small phantom cohort, the shipped autoencoder checkpoint), so without the
checks each of them would get far enough to fail deep inside with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import phantom, write_case

from uad import cli
from uad.core import fileio
from uad.runs import folders

SHIPPED_AE = Path(__file__).resolve().parents[1] / "checkpoints" / "autoencoder"


def _fails_cleanly(argv: list[str], capsys, *expected: str) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--split-ratios", "nan,nan,nan"], "split ratios must be three finite"),
        (["--seed", "-1"], "--seed must be >= 0 and < 2**63, got -1"),
        (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
        (["--device", "foo"], "--device 'foo' is not a device"),
        (["--max-minutes", "nan"], "--max-minutes must be a finite number"),
    ],
    ids=["nan-ratios", "negative-seed", "negative-workers", "unknown-device", "nan-minutes"],
)
def test_bad_train_arguments(make_cohort, tmp_path, capsys, extra, expected):
    root = make_cohort(2)
    argv = ["train", "--model", "autoencoder", "--data", str(root), "--image-size", "64", "--epochs", "1",
            "--max-minutes", "0.05", "--out", str(tmp_path / "run"), "--no-progress", *extra]
    _fails_cleanly(argv, capsys, expected)
    assert not (tmp_path / "run").exists()


def test_train_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "run.txt"
    out.write_text("mine")
    _fails_cleanly(["train", "--model", "autoencoder", "--out", str(out)], capsys, str(out), "must be a folder")
    assert out.read_text() == "mine"


@pytest.mark.skipif(not (SHIPPED_AE / "best").is_dir(), reason="shipped autoencoder checkpoint not present")
def test_score_out_that_is_a_file(tmp_path, capsys):
    case = write_case(tmp_path, "C", {"flair": phantom()[0]["flair"]})
    out = tmp_path / "maps"
    out.write_text("mine")
    argv = ["score", "--run", str(SHIPPED_AE), "--case", str(case), "--device", "cpu"]
    _fails_cleanly([*argv, "--out", str(out)], capsys, f"{out}: --out must be a folder, but this is an existing file")
    _fails_cleanly([*argv, "--out", str(out / "sub")], capsys, f"lies under {out}, which is a file")
    _fails_cleanly([*argv, "--out", str(tmp_path), "--device", "cuda:99"], capsys, "--device cuda:99")
    assert out.read_text() == "mine"
    assert cli.main([*argv, "--out", str(tmp_path / "new" / "maps")]) == 0  # a folder still to be made is fine
    assert (tmp_path / "new" / "maps" / "C_anomaly.nii.gz").is_file()


def test_compare_csv_that_is_a_folder(tmp_path, capsys):
    run = tmp_path / "run"
    fileio.write_json(run / "eval" / "metrics.json", {"model": "autoencoder", "slice_auroc": 0.7})
    target = tmp_path / "table"
    target.mkdir()
    _fails_cleanly(["compare", str(run), "--csv", str(target)], capsys, f"{target}: --csv must be a file name")
    assert list(target.iterdir()) == []
    assert cli.main(["compare", str(run), "--csv", str(target / "t.csv")]) == 0  # a file in it is fine
    assert (target / "t.csv").read_text().startswith("method,")


def test_a_full_disk_anywhere_is_one_line(monkeypatch, capsys, tmp_path):
    import errno

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.bin"))

    monkeypatch.setattr(cli, "cmd_info", full)
    _fails_cleanly(["info", "--data", str(tmp_path)], capsys, f"{tmp_path / 'x.bin'}: disk full")


@pytest.mark.parametrize(
    "given, expected",
    [
        (["--server.port", "8502"], ["--server.address", "127.0.0.1", "--server.port", "8502"]),
        (["--server.address", "0.0.0.0"], ["--server.address", "0.0.0.0"]),  # deliberate: passed through
        (["--server.address=10.0.0.2"], ["--server.address=10.0.0.2"]),
    ],
)
def test_app_launcher_is_local_unless_told_otherwise(monkeypatch, given, expected):
    import os
    import sys

    calls = []

    def run(*args):  # os.execv(exe, argv) or subprocess.call(argv): never returns to the launcher
        calls.append(args[-1])
        raise SystemExit(0)

    monkeypatch.delenv("STREAMLIT_SERVER_ADDRESS", raising=False)
    monkeypatch.setattr(os, "execv", run)
    monkeypatch.setattr("subprocess.call", run)
    with pytest.raises(SystemExit):
        cli.main(["app", *given])
    (argv,) = calls
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"] and argv[4].endswith("app/Home.py")
    assert argv[5:] == expected


# -- uad runs ----------------------------------------------------------------------------------------------
def _fake_run(name: str, state: str = "completed", **status) -> Path:
    from uad.core import paths

    run = paths.runs_dir() / name
    run.mkdir(parents=True)
    fileio.write_json(run / "config.json", {"model": "autoencoder", "train": {"epochs": 2}})
    folders.write_status(run, state, epoch=2, epochs=2, **status)
    return run


def test_runs_name_tag_note_archive_restore_delete(capsys):
    from uad.core import paths
    from uad.runs import meta as run_meta

    run = _fake_run("20250101-000000-autoencoder", end={"kind": "completed", "epochs_done": 2, "epochs": 2})
    assert cli.main(["runs", "rename", run.name, "baseline AE"]) == 0
    assert cli.main(["runs", "tag", "baseline AE", "flair", "64px"]) == 0  # found by the name it was given
    assert cli.main(["runs", "tag", str(run), "64px", "--remove"]) == 0
    assert cli.main(["runs", "note", run.name, "first try, lr 1e-3"]) == 0
    assert run_meta.read_meta(run) == {"name": "baseline AE", "tags": ["flair"], "note": "first try, lr 1e-3"}
    capsys.readouterr()
    assert cli.main(["runs", "list"]) == 0
    out = capsys.readouterr().out
    assert run.name in out and "baseline AE" in out and "flair" in out and "completed 2/2 epochs" in out

    _fails_cleanly(["runs", "tag", run.name, "a,b"], capsys, "without spaces or commas")
    _fails_cleanly(["runs", "delete", run.name], capsys, "pass --yes to confirm")  # stdin is not a terminal here
    assert run.is_dir()

    assert cli.main(["runs", "archive", run.name]) == 0
    archived = paths.runs_dir() / ".archive" / run.name
    assert archived.is_dir() and not run.exists()
    capsys.readouterr()
    cli.main(["runs", "list"])
    assert run.name not in capsys.readouterr().out
    cli.main(["runs", "list", "--archived"])
    assert "baseline AE" in capsys.readouterr().out
    assert cli.main(["runs", "restore", run.name]) == 0 and run.is_dir() and run_meta.read_meta(run)["name"] == "baseline AE"
    assert cli.main(["runs", "delete", run.name, "--yes"]) == 0
    assert not run.exists() and [p.name for p in paths.runs_dir().iterdir()] == [".archive"]  # nothing else left
    _fails_cleanly(["runs", "delete", run.name, "--yes"], capsys, f"no run '{run.name}'")


def test_runs_refuses_active_runs_and_shipped_checkpoints(capsys, tmp_path, monkeypatch):
    import os

    from uad.core import paths

    live = _fake_run("20250101-000001-autoencoder", "running", pid=os.getpid())  # this process: alive
    for action in (["archive"], ["delete", "--yes"]):
        _fails_cleanly(["runs", action[0], live.name, *action[1:]], capsys, "is running; cancel it first")
    assert live.is_dir()

    shipped = tmp_path / "ckpts" / "autoencoder"
    shipped.mkdir(parents=True)
    fileio.write_json(shipped / "config.json", {"model": "autoencoder"})
    monkeypatch.setattr(paths, "checkpoints_dir", lambda: tmp_path / "ckpts")
    _fails_cleanly(["runs", "delete", str(shipped), "--yes"], capsys, "shipped checkpoint", "never deleted")
    _fails_cleanly(["runs", "archive", str(shipped)], capsys, "never archived")
    assert (shipped / "config.json").is_file()

    elsewhere = tmp_path / "my-run"  # a run folder the user keeps outside runs/: never deleted by uad
    elsewhere.mkdir()
    fileio.write_json(elsewhere / "config.json", {"model": "autoencoder"})
    _fails_cleanly(["runs", "delete", str(elsewhere), "--yes"], capsys, "not a run in")
    assert elsewhere.is_dir()


def test_runs_resume_in_the_background_refuses_what_it_cannot_resume(capsys):
    run = _fake_run("20250101-000002-autoencoder", "cancelled")
    _fails_cleanly(["runs", "resume", run.name], capsys, "cannot be resumed", "no last/ checkpoint")
    _fails_cleanly(["runs", "cancel", "nonexistent"], capsys, "no run 'nonexistent'")
    assert cli.main(["runs", "cancel", run.name]) == 0
    assert "not running" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--bottleneck", "nope"], "invalid choice: 'nope'"),
        (["--base-channels", "100000"], "model option base_channels must be between 1 and 256, got 100000"),
        (["--noise-res", "0"], "noise_res"),
    ],
    ids=["choice", "bounds", "model-check"],
)
def test_bad_model_options_leave_no_run_folder(make_cohort, tmp_path, capsys, extra, expected):
    root = make_cohort(2)
    argv = ["train", "--model", "autoencoder", "--data", str(root), "--image-size", "64", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress", *extra]
    if extra[0] == "--bottleneck":  # argparse's own message (exit 2, usage first)
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2 and expected in capsys.readouterr().err
    else:
        _fails_cleanly(argv, capsys, expected)
    assert not (tmp_path / "run").exists()
