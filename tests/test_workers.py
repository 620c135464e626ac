"""Worker pools: no worker outlives the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uad.core.processes import pid_alive

REPO = Path(__file__).resolve().parents[1]

# Imported by every Python process of the test's subprocess tree (it is first on PYTHONPATH): a worker
# announces itself, then blocks inside its first case, so the parent is killed while its workers are busy.
SLOW_WORKER = """
import os, time
from pathlib import Path

import uad.data.store as store


def slow_preprocess(*args, **kwargs):
    Path(os.environ["UAD_TEST_BUSY"], str(os.getpid())).touch()
    time.sleep(120)


store.preprocess_case = slow_preprocess

if os.environ.get("UAD_TEST_NO_DEATHSIG"):  # leave it to the polling thread (the non-main-thread case)
    import uad.core.workers

    uad.core.workers._set_parent_death_signal = lambda: None
"""


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (scanning /proc: psutil is not a dependency)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
@pytest.mark.parametrize("deathsig", [True, False], ids=["deathsig", "polling"])
def test_workers_exit_when_prepare_is_killed(make_cohort, tmp_path, deathsig):
    root = make_cohort(4)
    hook, busy = tmp_path / "hook", tmp_path / "busy"
    hook.mkdir()
    busy.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]), "UAD_TEST_BUSY": str(busy)}
    if not deathsig:
        env["UAD_TEST_NO_DEATHSIG"] = "1"
    cmd = [sys.executable, "-m", "uad", "prepare", "--data", str(root), "--image-size", "64", "--workers", "2"]
    parent = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120  # two spawned workers importing numpy/pandas on a busy machine
        while len(list(busy.iterdir())) < 2:
            assert parent.poll() is None, f"prepare exited early: {parent.stderr.read().decode()}"
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.2)
        workers = {int(p.name) for p in busy.iterdir()}
        children = _children(parent.pid)
        assert workers <= children
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if pid_alive(p)], "workers outlived their killed parent"
        assert not [p for p in children if pid_alive(p)], "a helper process outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in children:  # on failure: do not leave 120 s sleepers behind
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stderr.close()
