"""What the app keeps between reruns: the active dataset, discovered cases, loaded checkpoints, scored
cases and read evaluations (Streamlit caches around ``uad`` calls), and the guard on where it listens.

Nothing here draws (that is ``ui.py`` and ``viewer.py``) and nothing here computes science (that is ``uad``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from safe import md

from uad.checkpoints import record as ckpt_record
from uad.core import fileio, paths
from uad.core.errors import UADError
from uad.data.cases import Case, discover_cases
from uad.evaluation import summaries
from uad.jobs import run_jobs

if TYPE_CHECKING:
    from uad.data.preprocess import WorkingCase

REPO_ROOT = paths.REPO_ROOT
# What bad input (files, folders, checkpoints) can raise: shown as a message on the page, never a traceback.
# MemoryError: one oversized case must cost a message, not the page (or the other cases).
APP_ERRORS = (UADError, MemoryError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError)

# -- where the app listens ------------------------------------------------------------------------------
_FROM_COMMAND_LINE = "command-line argument or environment variable"  # streamlit.config._DEFINED_BY_FLAG


def is_local_address(address: str | None) -> bool:
    """Loopback or a unix socket. None or "" means every interface (Streamlit's default)."""
    import ipaddress

    if not address:
        return False
    if address == "localhost" or address.startswith("unix://"):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network interface


def address_problem() -> str | None:
    """Why the app must not serve on the configured address, or None when it may.

    A network address is fine only when the user gave it on the command line (or as
    STREAMLIT_SERVER_ADDRESS); from a config file or Streamlit's default it is an accident, e.g. a
    `streamlit run` started outside the repository, where the repository's config.toml is not read.
    """
    from streamlit import config

    address = config.get_option("server.address")
    where = config.get_where_defined("server.address")
    if is_local_address(address) or where == getattr(config, "_DEFINED_BY_FLAG", _FROM_COMMAND_LINE):
        return None
    shown = address or "every network interface"
    origin = "Streamlit's default" if where == "<default>" else where
    return (f"This app would be served on {shown} ({origin}), reachable from other machines. It serves on "
            "127.0.0.1 only unless you ask otherwise: start it with `python -m uad app`, or pass "
            "`--server.address 127.0.0.1` (or a network address, deliberately) to `streamlit run`.")


def require_local_address() -> None:
    """Stop the page when the running server listens on a network address nobody asked for."""
    from streamlit.runtime import Runtime

    # Bare mode has no runtime, and AppTest's is a mock: no server, nothing listens.
    if not Runtime.exists() or type(Runtime.instance()) is not Runtime:
        return
    problem = address_problem()
    if problem:
        print(f"uad app: refusing to serve: {problem}", file=sys.stderr, flush=True)
        st.error(md(problem))
        st.stop()



# -- active dataset --------------------------------------------------------------------------------------
def active_root() -> Path:
    """The dataset the pages show: the user's folder if set on the Data page, else the demo cohort."""
    root = st.session_state.get("data_root")
    return Path(root) if root else paths.demo_dir()


def set_active_root(root: str | Path | None) -> None:
    st.session_state["data_root"] = str(root) if root else None


def is_demo(root: Path) -> bool:
    return Path(root).resolve() == paths.demo_dir().resolve()


def case_key(page: str, root: str | Path) -> str:
    """Session key of a page's case box, one per dataset folder: a box never shows a case of another folder
    (a widget reused across folders kept its old value while the images were another folder's case)."""
    return f"{page}_case::{Path(root).resolve()}"


def keep_choice(key: str, default=None, options=None) -> None:
    """Before the widget keyed ``key`` is drawn: bring back the user's last choice when Streamlit dropped it
    (it forgets a widget's value after a run that did not draw it: leaving the page, another folder's box),
    else start at ``default``; a value no longer among ``options`` is forgotten. The widget is then drawn
    without a default of its own, so no value comes from two places (Streamlit warns about that)."""
    kept = st.session_state.setdefault("kept_choices", {})
    if key not in st.session_state and key in kept:
        st.session_state[key] = kept[key]
    if options is not None and key in st.session_state:
        value = st.session_state[key]
        if isinstance(value, list):
            st.session_state[key] = [v for v in value if v in options]
        elif value not in options:
            del st.session_state[key]
    if key not in st.session_state and default is not None:
        st.session_state[key] = default


def remember_choice(key: str) -> None:
    """After the widget keyed ``key``: its value, for ``keep_choice`` to bring back."""
    if key in st.session_state:
        st.session_state.setdefault("kept_choices", {})[key] = st.session_state[key]


def dataset_label(root: Path) -> str:
    return f"demo cohort ({root})" if is_demo(root) else str(root)


@st.cache_data(show_spinner=False, max_entries=16, ttl=60)
def _discover(root: str, stamp: float):
    return discover_cases(root)


def discover(root: Path) -> tuple[list[Case], list, str | None]:
    """(cases, skipped, error message). Never raises for a bad folder."""
    try:
        cases, skipped = _discover(str(root), fileio.mtime(Path(root)))
    except UADError as exc:
        return [], [], str(exc)
    except OSError as exc:
        return [], [], f"{root}: cannot read the folder ({exc.strerror or exc})"
    return cases, skipped, None


def find_case(root: Path, case_id: str) -> Case | None:
    cases, _, _ = discover(root)
    return next((c for c in cases if c.case_id == case_id), None)


def case_stamp(case: Case) -> tuple:
    """Size and mtime of every file of a case: part of every cache key built from it."""
    out = []
    for p in [*case.modalities.values(), case.seg]:
        if p is None:
            continue
        try:
            st_ = p.stat()
            out.append((str(p), st_.st_size, st_.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)



# -- display volumes (Data page) ------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=3)  # resource: no 30 MB pickle copy per call
def load_display_case(root: str, case_id: str, stamp: tuple):
    """``uad.data.display.load_display_case`` of a case of ``root``, kept per case and files (``stamp``); None when gone."""
    from uad.data import display

    case = find_case(Path(root), case_id)
    return None if case is None else display.load_display_case(case)



# -- runs (state and processes live in uad.jobs) ---------------------------------------------------------
def list_run_views(include_shipped: bool = True, archived: bool = False, warn: bool = False) -> list[run_jobs.RunView]:
    """Every run (``uad.jobs.run_jobs.list_run_views``); one damaged folder never hides the others. ``warn``
    (once per page) says which folders were left out and why, and which interrupted deletes were finished."""
    skipped, finished = [], []
    try:
        views = run_jobs.list_run_views(include_shipped=include_shipped, archived=archived, skipped=skipped,
                                        finished=finished)
    except APP_ERRORS as exc:
        st.error(md(f"Cannot list the runs in {paths.runs_dir()}: {exc}"))
        return []
    if warn:
        for s in skipped:
            st.warning(md(f"Skipped {s.path}: {s.reason}"))
        for folder, _size in finished:
            st.info(md(f"Finished deleting {folder}, a delete interrupted earlier."))
    return views



# -- checkpoints and scoring (Explore) ------------------------------------------------------------------
def checkpoint_stamp(run_dir: Path) -> tuple:
    """Changes when the checkpoint is rewritten (a new best epoch): part of every cache key."""

    folder = ckpt_record.resolve(run_dir)
    out = []
    for name in (ckpt_record.META, ckpt_record.WEIGHTS):
        try:
            s = (folder / name).stat()
            out.append((str(folder / name), s.st_size, s.st_mtime_ns))
        except OSError:
            out.append((str(folder / name), -1, -1))
    return tuple(out)


def weights_sha256(run_dir: Path) -> str | None:
    """The SHA-256 of the run's current weights, as its checkpoint.json records it (checked, read without torch)."""
    try:
        return ckpt_record.CheckpointRecord.read(run_dir).weights_sha256
    except (UADError, OSError, ValueError):
        return None


@st.cache_resource(show_spinner=False, max_entries=4)
def load_checkpoint(run_dir: str, stamp: tuple):
    from uad.checkpoints import weights as ckpt_weights

    return ckpt_weights.load(run_dir)


@st.cache_resource(show_spinner=False, max_entries=6)
def prepare_case(root: str, case_id: str, preprocess_key: tuple, stamp: tuple) -> WorkingCase:
    """``uad.data.store.load_working_case``, kept per case, config and files (``stamp`` changes with them). A case
    the slice cache does not hold up to date is preprocessed once and kept on disk with the maps
    (``uad.scoring.cache.cached_working_case``): a restarted app reads it back in milliseconds instead of
    decoding the NIfTI files and preprocessing them again (0.4–0.9 s of CPU for a demo case)."""
    from uad.data.preprocess import PreprocessConfig
    from uad.scoring import cache

    # The app's cached discovery spares a folder scan; a case gone since then is looked up (and reported) by uad.
    return cache.working_case(root, find_case(Path(root), case_id) or case_id, PreprocessConfig.from_dict(dict(preprocess_key)))


@st.cache_resource(show_spinner=False, max_entries=6)
def score_case(run_dir: str, ckpt_stamp: tuple, root: str, case_id: str, case_stamp: tuple, recipe_json: str):
    """Anomaly maps of a whole case with one scoring recipe (``ScoringRecipe`` as JSON), kept here for the
    slider and on disk by ``uad.scoring.cache`` (per weights, recipe, case files and preprocessing), so a
    revisit, another session or a restarted app reads them instead of computing them again."""
    import json

    from uad.scoring import cache
    from uad.scoring.recipe import ScoringRecipe

    ckpt = load_checkpoint(run_dir, ckpt_stamp)
    prep = prepare_case(root, case_id, freeze(ckpt.preprocess.to_dict()), case_stamp)
    return prep, cache.viewer_maps(ckpt, prep, ScoringRecipe.from_dict(json.loads(recipe_json)), find_case(Path(root), case_id))


def freeze(d: dict) -> tuple:
    """A hashable, order-independent cache key for a config dict (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in d.items()))


# -- evaluation results (Compare, Explore; read and shaped by uad.report) ----------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _read_eval(folder: str, stamp: float) -> dict:
    from uad.evaluation import summaries

    return summaries.load_evaluation(folder)


def read_eval(summary: summaries.EvaluationSummary) -> dict:
    """An evaluation's curves and labelled slices (``uad.report.load_evaluation``), cached until it is rewritten."""
    folder = summary.folder or Path(".")
    return _read_eval(str(folder), fileio.mtime(folder / "metrics.json"))
