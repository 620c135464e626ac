"""The maps cache: a run's maps of a case are computed once per recipe, and never reused for anything else."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from uad.data.cases import discover_cases
from uad.data.preprocess import PreprocessConfig, preprocess_case
from uad.models import create_model
from uad.scoring import cache
from uad.scoring.maps import score_case
from uad.scoring.recipe import PostprocessConfig, ScoringRecipe
from uad.scoring.scorers import ModelScorer

CONFIG = PreprocessConfig(image_size=64)
SHA = "a" * 64


@pytest.fixture
def setup(make_cohort):
    torch.manual_seed(0)
    root = make_cohort(2)
    case = discover_cases(root)[0][0]
    scorer = ModelScorer(create_model("ae", image_size=64), device="cpu", keep_reconstruction=True)
    return case, preprocess_case(case, CONFIG), scorer


@pytest.fixture
def computed(monkeypatch):
    """Counts the maps actually computed (not read from the cache)."""
    calls = []

    def counting(scorer, working, recipe, rows=None):
        calls.append(recipe)
        return score_case(scorer, working, recipe, rows)

    monkeypatch.setattr(cache, "score_case", counting)
    return calls


def _score(setup, recipe=ScoringRecipe(), sha=SHA, scorer=None, config=CONFIG):
    case, working, own = setup
    return cache.cached_score_case(scorer or own, working, recipe, case=case, config=config, weights_sha256=sha)


def _equal(a, b):
    return (np.array_equal(a.maps, b.maps) and np.array_equal(a.scores, b.scores) and np.array_equal(a.mask, b.mask)
            and np.array_equal(a.reconstruction, b.reconstruction) and a.recipe == b.recipe)


def test_maps_are_computed_once_and_read_back_equal(setup, computed):
    first = _score(setup)
    again = _score(setup)
    assert len(computed) == 1 and _equal(first, again)
    assert again.recipe == ScoringRecipe().for_model("positive")  # the model's own residual, as computed
    assert len(list(cache.cache_dir().glob("*.npz"))) == 1


def test_two_callers_at_once_compute_the_maps_once(setup, monkeypatch):
    """Two sessions of the app (or a session and the app's prefetch) asking for the same maps at the same time:
    one computes them, the other waits and reads them."""
    import threading
    import time

    calls = []

    def slow(scorer, working, recipe, rows=None):
        calls.append(threading.current_thread().name)
        time.sleep(0.5)  # long enough for the second caller to arrive while the first computes
        return score_case(scorer, working, recipe, rows)

    monkeypatch.setattr(cache, "score_case", slow)
    got = {}
    threads = [threading.Thread(target=lambda n=n: got.__setitem__(n, _score(setup)), name=f"caller-{n}") for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and len(got) == 2 and _equal(got[0], got[1])
    assert len(cache._locks) == 0  # an entry's lock is dropped once no one holds or waits for it


def test_another_checkpoint_recipe_preprocessing_or_edited_file_never_reuses_old_maps(setup, computed):
    case, working, scorer = setup
    _score(setup)
    _score(setup, sha="b" * 64)  # new weights
    _score(setup, recipe=ScoringRecipe(post=PostprocessConfig(median_3d=True)))  # another recipe
    _score(setup, recipe=ScoringRecipe(residual="abs"))  # another residual
    _score(setup, config=PreprocessConfig(image_size=64, modalities=("flair", "t2")))  # other preprocessing
    assert len(computed) == 5
    flair = case.modalities["flair"]
    st = flair.stat()
    os.utime(flair, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the case's file changed
    _score(setup)
    assert len(computed) == 6
    # The same residual named explicitly is the model's own: the same maps.
    _score(setup, recipe=ScoringRecipe(residual="positive"))
    assert len(computed) == 6


def test_a_damaged_or_foreign_entry_is_computed_again_never_trusted(setup, computed):
    first = _score(setup)
    (entry,) = cache.cache_dir().glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    assert _equal(_score(setup), first) and len(computed) == 2
    entry.write_bytes(b"not a zip file at all")
    assert _equal(_score(setup), first) and len(computed) == 3
    # Another key's entry under this name (e.g. copied over it) is not this key's maps.
    _score(setup, sha="b" * 64)
    other = next(p for p in cache.cache_dir().glob("*.npz") if p != entry)
    entry.write_bytes(other.read_bytes())
    assert _equal(_score(setup), first) and len(computed) == 5
    assert _equal(_score(setup), first) and len(computed) == 5  # and the bad entry was replaced


def test_an_entry_without_reconstruction_does_not_serve_a_scorer_that_keeps_them(setup, computed):
    case, working, keeping = setup
    plain = ModelScorer(keeping.model, device="cpu")
    assert _score(setup, scorer=plain).reconstruction is None
    assert _score(setup, scorer=plain).reconstruction is None and len(computed) == 1
    assert _score(setup, scorer=keeping).reconstruction is not None and len(computed) == 2
    assert _score(setup, scorer=plain).reconstruction is not None and len(computed) == 2


def test_without_weights_or_case_nothing_is_cached(setup, computed):
    case, working, scorer = setup
    _score(setup, sha=None)
    cache.cached_score_case(scorer, working, ScoringRecipe(), case=None, config=CONFIG, weights_sha256=SHA)
    assert len(computed) == 2 and not list(cache.cache_dir().glob("*.npz"))


def test_the_cache_keeps_the_most_recently_used_entries_within_its_size(setup, computed, monkeypatch):
    _score(setup, sha="1" * 64)
    entry_size = next(cache.cache_dir().glob("*.npz")).stat().st_size
    monkeypatch.setenv(cache.MAX_BYTES_ENV, str(int(2.5 * entry_size)))
    _score(setup, sha="2" * 64)
    for i, path in enumerate(sorted(cache.cache_dir().glob("*.npz"), key=lambda p: p.stat().st_mtime)):
        os.utime(path, (1000 + i, 1000 + i))  # distinct ages: "1" oldest
    _score(setup, sha="1" * 64)  # a hit marks "1" as just used
    _score(setup, sha="3" * 64)  # over the limit: the least recently used ("2") goes
    assert len(computed) == 3 and len(list(cache.cache_dir().glob("*.npz"))) == 2
    _score(setup, sha="1" * 64)
    assert len(computed) == 3
    _score(setup, sha="2" * 64)
    assert len(computed) == 4


# -- the preprocessed case, kept beside the maps -------------------------------------------------------------
@pytest.fixture
def preprocessed(monkeypatch):
    """Counts the cases actually preprocessed (not read from the cache)."""
    calls = []

    def counting(case, config):
        calls.append(case.case_id)
        return preprocess_case(case, config)

    monkeypatch.setattr(cache, "preprocess_case", counting)
    return calls


def _same_case(a, b):
    import pandas as pd

    return (a.case_id == b.case_id and a.images.dtype == b.images.dtype == np.float32 and np.array_equal(a.images, b.images)
            and np.array_equal(a.tumour, b.tumour) and np.array_equal(a.brain, b.brain) and a.labelled == b.labelled
            and a.norm == b.norm and a.geometry.to_dict() == b.geometry.to_dict()
            and np.array_equal(a.geometry.kept, b.geometry.kept) and a.geometry.kept.dtype == b.geometry.kept.dtype
            and pd.testing.assert_frame_equal(a.table, b.table) is None)


def test_a_working_case_is_preprocessed_once_and_read_back_equal(make_cohort, preprocessed):
    root = make_cohort(2)
    case = discover_cases(root)[0][0]
    fresh = preprocess_case(case, CONFIG)
    first = cache.cached_working_case(case, CONFIG)
    again = cache.cached_working_case(case, CONFIG)
    assert preprocessed == [case.case_id] and _same_case(first, fresh) and _same_case(again, fresh)
    assert len(list(cache.cache_dir().glob("case-*.npz"))) == 1
    # Another config or an edited file is another entry; a damaged or foreign entry is preprocessed again.
    cache.cached_working_case(case, PreprocessConfig(image_size=64, crop_margin=2))
    assert len(preprocessed) == 2
    entry = cache.cache_dir() / f"case-{cache._digest(cache.working_case_key(case, CONFIG))}.npz"
    entry.write_bytes(entry.read_bytes()[:1000])
    assert _same_case(cache.cached_working_case(case, CONFIG), fresh) and len(preprocessed) == 3
    other = discover_cases(root)[0][1]
    cache.cached_working_case(other, CONFIG)
    entry.write_bytes((cache.cache_dir() / f"case-{cache._digest(cache.working_case_key(other, CONFIG))}.npz").read_bytes())
    assert _same_case(cache.cached_working_case(case, CONFIG), fresh) and len(preprocessed) == 5
    assert _same_case(cache.cached_working_case(case, CONFIG), fresh) and len(preprocessed) == 5  # replaced
    seg = case.seg or next(iter(case.modalities.values()))
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))
    cache.cached_working_case(case, CONFIG)
    assert len(preprocessed) == 6
