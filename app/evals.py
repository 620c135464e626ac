"""Evaluation widgets shared by Explore and Compare: evaluate a run on the active folder in the background
(with progress), the threshold presets of the active dataset, and the Compare → Explore case hand-off.

Everything shown comes from ``uad.jobs`` (the job) and ``uad.report`` (the evaluation); nothing is computed here.
"""

from __future__ import annotations

from pathlib import Path

import state
import streamlit as st
from safe import code, md

from uad.data import identity
from uad.evaluation import summaries
from uad.jobs import eval_jobs, run_jobs

EXPLORE_REQUEST = "explore_request"  # {"run": <run name>, "case": <case id>, "root": <dataset folder>}


def dataset_words(root: Path) -> str:
    ref = identity.dataset_ref(root)
    return f"{ref.label} ({ref.root})" if ref.id != identity.DEMO_ID else f"the demo cohort ({ref.root})"


def evaluate_control(v: run_jobs.RunView, root: Path, key: str) -> None:
    """'Evaluate <run> on <active folder>' with the job's progress; reruns the page when it finishes."""
    running = eval_jobs.eval_job(v, root).state == "running"
    st.fragment(run_every=2 if running else None)(_evaluate_body)(v, root, key, running)


def _evaluate_body(v: run_jobs.RunView, root: Path, key: str, was_running: bool) -> None:
    job = eval_jobs.eval_job(v, root)
    name = identity.dataset_ref(root).label
    if job.state == "running":
        st.progress(job.fraction, text=f"Evaluating {md(v.info.name)} on {md(name)}: {job.text}")
        return
    if was_running:
        st.rerun()  # finished or failed since the last poll: the whole page shows the new results
    if job.state == "failed":
        st.error(f"The evaluation of {md(v.info.name)} on {md(name)} failed:")
        st.code(job.log or "(no output)", language=None)
    split = eval_jobs.eval_split(v, root)
    what = ("its recorded test patients" if split == "test" else
            "every case, with thresholds calibrated on this folder's own healthy slices")
    label = f"{'Evaluate again' if job.state == 'done' else 'Evaluate'}: {md(v.info.name)} on {md(name)}"
    if st.button(label, key=f"evaluate::{key}::{v.info.name}", disabled=v.active, icon=":material/play_arrow:",
                 help=f"Runs {code(f'python -m uad evaluate --data {root} --split {split}')} in the background: {what}. "
                      f"Results go to {code(job.out)}."):
        eval_jobs.launch_eval(v, root)
        st.rerun()


def presets(v: run_jobs.RunView, root: Path) -> tuple[list[tuple[float, float]], summaries.EvaluationSummary | None]:
    """Threshold presets (healthy FPR, threshold) from the run's evaluation on the active dataset, and that
    evaluation (None when the run was never evaluated there: then there are no presets)."""
    summary = eval_jobs.evaluation_on(v, root)
    return (summary.presets() if summary is not None else []), summary


def presets_notice(v: run_jobs.RunView, root: Path, summary: summaries.EvaluationSummary | None) -> None:
    """Names where Explore's presets come from, or says there are none and offers the evaluation."""
    if summary is not None:
        words = summary.raw.get("calibration_words")
        if not isinstance(words, str):  # evaluations older than that record
            calibration = summary.raw.get("calibration_cases")
            words = f"calibrated on {len(calibration) if isinstance(calibration, list) else 0} cases' healthy slices"
        st.caption(f"Threshold presets (1/5/10 % healthy FPR) from {md(v.info.name)}'s evaluation on **{md(summary.where)}**: "
                   f"{md(words)} ({md(summary.raw.get('evaluated', ''))}).")
        if summary.drift_warning:
            st.warning(md(f"Drift check: {summary.drift_warning}"))
        return
    st.info(f"{md(v.info.name)} has not been evaluated on the active dataset, {md(dataset_words(root))}: no threshold presets "
            "calibrated on its healthy slices.")
    evaluate_control(v, root, "explore")


def open_in_explore(run: str, case: str, root: str | Path) -> None:
    """Compare's per-case table → Explore on that run, case and dataset (read by ``take_explore_request``)."""
    st.session_state[EXPLORE_REQUEST] = {"run": run, "case": case, "root": str(root)}
    st.switch_page("views/explore.py")


def take_explore_request() -> dict | None:
    """Explore, before its selectors are drawn: apply (and forget) a pending request to open a case."""
    req = st.session_state.pop(EXPLORE_REQUEST, None)
    if not isinstance(req, dict):
        return None
    if req.get("root"):
        state.set_active_root(req["root"])
    if req.get("run"):
        st.session_state["explore_run"] = req["run"]
    if req.get("case"):
        cases, _, _ = state.discover(state.active_root())
        if any(c.case_id == req["case"] for c in cases):  # a selectbox value must be one of its options
            st.session_state[state.case_key("explore", state.active_root())] = req["case"]
        else:
            st.session_state.pop(state.case_key("explore", state.active_root()), None)
            st.warning(md(f"Case {req['case']} is no longer in {state.active_root()}."))
    return req
