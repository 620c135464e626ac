"""Command-line arguments a user can get wrong: one line on stderr and exit code 2, never a traceback.

The commands get real inputs (a small phantom cohort, the shipped autoencoder checkpoint), so without the
checks each of them would get far enough to fail deep inside with a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import phantom, write_case
from uad import cli, fileio

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
