"""The slice cache as a whole: listing, last use, pruning, the size limit, and entries in use."""

from __future__ import annotations

import logging
import os
import time

import pytest

from uad.cli import main as cli
from uad.core import paths
from uad.core.errors import ConfigError
from uad.data import PreprocessConfig, SliceStore, build_store, cache
from uad.data.store import store_dir

DAY = 86400


def _config(size):
    return PreprocessConfig(image_size=size)


def _build(root, size, **kw):
    """Build an entry and let go of it (the returned store would hold it)."""
    store = build_store(root, _config(size), workers=1, progress=False, **kw)
    entry = store.root
    store.close()
    return entry


def _set_last_used(entry, t):
    (entry / cache.LAST_USED).write_text(f"{t}\n")


def test_list_shows_each_entry_with_dataset_config_cases_size_and_last_use(make_cohort, capsys):
    root = make_cohort(2)
    t0 = time.time()
    a, b = _build(root, 64), _build(root, 80)
    found = cache.entries()
    assert [e.path for e in found] == [a, b]  # least recently used first
    for e, size in zip(found, (64, 80)):
        assert e.dataset == str(root.resolve()) and e.modalities == ("flair",) and e.image_size == size
        assert e.cases == 2 and e.size == cache.disk_usage(e.path) > 100_000
        assert t0 - 1 <= e.last_used <= time.time() and not e.in_use
    assert cli(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(paths.cache_dir()) in out and "2 entries" in out
    lines = [line for line in out.splitlines() if str(root.resolve()) in line]
    assert len(lines) == 2 and "flair 80px" in lines[0] and "flair 64px" in lines[1]  # most recent first
    assert cli(["cache", "list"]) == 0 and capsys.readouterr().out == out


def test_empty_cache_lists_as_empty(capsys):
    assert cli(["cache", "list"]) == 0
    assert "empty" in capsys.readouterr().out


def test_opening_a_store_records_its_last_use(make_cohort):
    entry = _build(make_cohort(2), 64)
    manifest_mtime = (entry / "manifest.json").stat().st_mtime_ns
    _set_last_used(entry, 1000.0)
    assert cache.last_used(entry) == 1000.0
    SliceStore(entry).close()
    assert cache.last_used(entry) > time.time() - 60
    assert (entry / "manifest.json").stat().st_mtime_ns == manifest_mtime  # the manifest is not rewritten
    # Entries written before last_used existed fall back to the manifest's time.
    (entry / cache.LAST_USED).unlink()
    assert cache.last_used(entry) == (entry / "manifest.json").stat().st_mtime


def test_prune_older_than_and_max_size_remove_least_recently_used_whole_entries(make_cohort, capsys):
    root = make_cohort(2)
    a, b, c = _build(root, 64), _build(root, 80), _build(root, 96)
    now = time.time()
    _set_last_used(a, now - 30 * DAY)
    _set_last_used(b, now - 10 * DAY)
    _set_last_used(c, now - 1 * DAY)

    assert cli(["cache", "prune", "--older-than", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove {a.parent.name}/{a.name}" in out and f"{b.parent.name}/{b.name}" in out and c.name not in out
    assert a.exists() and b.exists()

    assert cli(["cache", "prune", "--older-than", "20"]) == 0
    assert not a.exists() and b.exists() and c.exists()
    assert "removed 1 entries" in capsys.readouterr().out

    limit = cache.disk_usage(c) + 1000  # room for c only: b (older) goes
    assert cli(["cache", "prune", "--max-size", f"{limit}"]) == 0
    assert not b.exists() and c.exists()
    assert cli(["cache", "prune", "--max-size", "0"]) == 0
    assert not c.exists() and not c.parent.exists()  # the dataset folder goes with its last entry
    assert paths.cache_dir().exists()


def test_prune_never_removes_an_entry_being_built_or_read(make_cohort, capsys):
    root = make_cohort(2)
    a = _build(root, 64)
    reader = SliceStore(a)  # e.g. a training run reading it
    building = cache.use_entry(store_dir(root, _config(80)), create=True)  # what build_store holds meanwhile
    assert [e.in_use for e in cache.entries()] == [True, True]
    assert cli(["cache", "prune", "--max-size", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("in use") == 2 and "removed 0 entries" in out
    assert (a / "manifest.json").exists() and store_dir(root, _config(80)).exists()
    reader.close()
    building.release()
    assert cli(["cache", "prune", "--max-size", "0"]) == 0
    assert not a.exists() and not store_dir(root, _config(80)).exists()


def test_a_builder_that_waited_on_a_removal_starts_a_fresh_entry(make_cohort):
    root = make_cohort(2)
    a = _build(root, 64)
    assert cache.remove_entry(a)
    hold = cache.use_entry(a, create=True)
    try:
        assert (a / "cases").is_dir() and (a / cache.LOCK).exists()
    finally:
        hold.release()
    assert build_store(root, _config(64), workers=1, progress=False).case_ids == ["BraTS2021_00000", "BraTS2021_00001"]


def test_prune_touches_nothing_but_cache_entries(make_cohort, tmp_path):
    root = make_cohort(2)
    _build(root, 64)
    cache_root = paths.cache_dir()
    outside = tmp_path / "outside" / "0123456789ab"  # shaped like an entry, but outside the cache
    outside.mkdir(parents=True)
    (outside / "manifest.json").write_text("{}")
    os.symlink(outside.parent, cache_root / "linked-0123abcd")
    (cache_root / "notes").mkdir()
    (cache_root / "notes" / "0123456789ab").mkdir()
    (cache_root / "README").write_text("mine")
    assert cli(["cache", "prune", "--max-size", "0"]) == 0
    assert (outside / "manifest.json").exists() and (cache_root / "notes" / "0123456789ab").exists()
    assert (cache_root / "README").exists() and (cache_root / "linked-0123abcd").is_symlink()
    assert cache.entries() == []
    with pytest.raises(ConfigError, match="not an entry of the slice cache"):
        cache.remove_entry(cache_root / "linked-0123abcd" / "0123456789ab")


def test_build_evicts_least_recently_used_other_entries_over_the_limit(make_cohort, caplog):
    root = make_cohort(2)
    a, b, c = _build(root, 64), _build(root, 80), _build(root, 96)
    now = time.time()
    _set_last_used(a, now - 300)
    _set_last_used(b, now - 200)
    _set_last_used(c, now - 400)  # the oldest, but the one being opened now
    limit = cache.disk_usage(b) + cache.disk_usage(c) + 1000  # room for b and c: a goes
    with caplog.at_level(logging.WARNING, logger="uad.data.cache"):
        store = build_store(root, _config(96), workers=1, progress=False, max_cache_bytes=limit)
    assert not a.exists() and b.exists() and c.exists() and store.case_ids
    assert any(str(a) in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)


def test_size_limit_from_the_environment_never_evicts_the_entry_just_built(make_cohort, monkeypatch, caplog):
    root = make_cohort(2)
    a = _build(root, 64)
    monkeypatch.setenv(cache.MAX_BYTES_ENV, "1kB")
    with caplog.at_level(logging.WARNING, logger="uad.data.cache"):
        b = build_store(root, _config(80), workers=1, progress=False).root
    assert not a.exists() and b.exists()
    assert any("over its limit" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(cache.MAX_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{cache.MAX_BYTES_ENV}=lots: 'lots' is not a size"):
        build_store(root, _config(80), workers=1, progress=False)


@pytest.mark.parametrize("text, expected", [("123", 123), ("500MB", 500_000_000), ("2GB", 2_000_000_000),
                                            ("1.5g", 1_500_000_000), ("3GiB", 3 * 2**30), ("10 kB", 10_000)])
def test_sizes(text, expected):
    assert cache.parse_size(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["cache", "prune"], "needs --older-than DAYS and/or --max-size SIZE"),
    (["cache", "prune", "--max-size", "2XB"], "--max-size: '2XB' is not a size"),
    (["cache", "prune", "--older-than", "-1"], "--older-than must be a number of days >= 0"),
    (["cache", "prune", "--older-than", "nan"], "--older-than must be a number of days >= 0"),
])
def test_bad_prune_arguments_are_one_line(argv, message, capsys):
    assert cli(argv) == 2
    assert message in capsys.readouterr().err
