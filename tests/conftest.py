"""Shared fixtures: tiny BraTS-layout NIfTI cases written on the fly, and an isolated UAD_HOME."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REAL_CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_case"
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 47], [0, 0, 1.0, 0], [0, 0, 0, 1]])
NAMES_2021 = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2", "seg": "seg"}
NAMES_2023 = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}


def phantom(shape=(48, 48, 24), seed=0, tumour=True):
    """A brain-like ellipsoid with smooth texture and, optionally, a bright spherical tumour.

    Returns ({modality: int16 volume}, uint8 seg). Axes are (x, y, z) of the stored file.
    """
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.95) ** 2 < 1
    seg = np.zeros(shape, np.uint8)
    if tumour:
        r2 = (x - 0.3) ** 2 + (y - 0.2) ** 2 + (z - 0.1) ** 2
        seg[(r2 < 0.12) & brain] = 2
        seg[(r2 < 0.05) & brain] = 4
        seg[(r2 < 0.02) & brain] = 1
    vols = {}
    for i, mod in enumerate(("flair", "t1", "t1ce", "t2")):
        base = 300 + 50 * i + 40 * np.sin(3 * x + i) * np.cos(2 * y) + rng.normal(0, 5, shape)
        base = base + 400 * (seg > 0) * (mod in ("flair", "t2"))
        vols[mod] = np.where(brain, np.maximum(base, 1), 0).astype(np.int16)
    return vols, seg


def write_case(root: Path, case_id: str, vols: dict, seg=None, names=NAMES_2021, sep="_", ext=".nii.gz", affine=BRATS_AFFINE):
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for mod, data in vols.items():
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"{case_id}{sep}{names[mod]}{ext}"))
    if seg is not None:
        nib.save(nib.Nifti1Image(seg, affine), str(folder / f"{case_id}{sep}{names['seg']}{ext}"))
    return folder


@pytest.fixture
def make_cohort(tmp_path):
    """Write ``n`` phantom cases (alternating tumour / no tumour) and return the root folder."""

    def make(n=4, root=None, **kwargs):
        root = root or tmp_path / "cohort"
        for i in range(n):
            vols, seg = phantom(seed=i, tumour=i % 2 == 0)
            write_case(root, f"BraTS2021_{i:05d}", vols, seg, **kwargs)
        return root

    return make


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test writes caches and runs under its own temporary UAD_HOME."""
    monkeypatch.setenv("UAD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UAD_CACHE_DIR", raising=False)
    # The app computes Explore's opening view in a background thread (uad.jobs.prefetch): off unless a test
    # is about it, so no test races a computation it did not ask for.
    monkeypatch.setenv("UAD_APP_PREFETCH", "0")
    return tmp_path / "home"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_streamlit(proc, grace: float = 15.0) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it started: SIGTERM to its process
    group, SIGKILL if it has not exited after ``grace`` seconds (a server busy in a background thread may not
    answer SIGTERM quickly)."""
    import os
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def wait_for_streamlit(port: int, proc, log_path: Path, timeout: float = 60.0) -> None:
    """Poll the server's health endpoint until it answers ``ok``; fail with its log if it dies or times out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            pytest.fail(f"streamlit did not start:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.2)
