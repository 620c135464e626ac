"""Atomic writes: the files they leave have the mode a plain open() would give, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from uad.core import fileio


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert fileio.current_umask() == mask
    fileio.write_json(tmp_path / "a.json", {"x": 1})
    fileio.write_text(tmp_path / "b.txt", "hi")
    with fileio.atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"x")
    for name in ("a.json", "b.txt", "c.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.bin"]


def test_full_disk_is_a_data_error_naming_the_target(tmp_path):
    import errno
    import pickle

    from uad.core.errors import DataError, DiskFullError

    target = tmp_path / "results" / "metrics.json"
    with pytest.raises(DataError, match="disk full") as err:
        with fileio.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(err.value, DiskFullError) and err.value.path == target and str(target) in str(err.value)
    assert list(target.parent.iterdir()) == []  # the partial temporary file is gone
    # Raised in a worker process, it must survive the trip back to the parent.
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is DiskFullError and str(again) == str(err.value) and again.path == target
