"""Overview: the active dataset (generating the demo cohort if missing) and every run with its key metrics."""

from __future__ import annotations

import time

import pandas as pd
import state
import streamlit as st
import ui

from uad.core import paths, processes
from uad.data.demo import demo_ready
from uad.evaluation import columns
from uad.jobs import background, eval_jobs
from uad.scoring.recipe import CASE_RATE

SYNTH_LAUNCH = "synth-launch.json"  # in the data folder: the generator the app started
SYNTH_LOG = "synth.log"


def _demo_cases_done() -> int:
    """Finished demo cases: each is renamed into place only when complete."""
    from uad.data.synth import cases_written

    return cases_written(paths.demo_dir())


def _synth_running() -> bool:
    background.reap()
    launch = background.launch_info(paths.data_dir() / SYNTH_LAUNCH)
    return bool(launch) and processes.pid_alive(launch.get("pid"))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@st.fragment(run_every=2)
def _synth_progress() -> None:
    from uad.data.synth import DEFAULT_CASES

    if demo_ready():
        st.success("Demo cohort ready.")
        st.session_state.pop("synth_started", None)
        st.rerun()  # whole page: the dataset summary below can now be shown
    done = _demo_cases_done()
    if _synth_running():
        text = f"Generating the demo cohort: {done} / {DEFAULT_CASES} cases"
        started = background.launch_info(paths.data_dir() / SYNTH_LAUNCH).get("started")
        if isinstance(started, (int, float)):
            elapsed = max(time.time() - started, 0.0)
            text += f" · {_duration(elapsed)} so far"
            if done:  # this machine's own pace so far, not a promise made elsewhere
                text += f", about {_duration(elapsed / done * (DEFAULT_CASES - done))} left"
        st.progress(min(done / DEFAULT_CASES, 1.0), text=text)
    else:
        log = background.tail(paths.data_dir() / SYNTH_LOG)
        st.session_state.pop("synth_started", None)  # the next page visit offers to generate it again
        st.error("The demo generator stopped before finishing." + (f"\n\n```\n{log}\n```" if log else ""))


def _dataset_section() -> None:
    root = state.active_root()
    st.subheader("Dataset")
    if state.is_demo(root) and not demo_ready():
        from uad.data.synth import DEFAULT_CASES

        if _synth_running() or st.session_state.get("synth_started"):
            _synth_progress()  # the progress replaces the "not generated yet" notice
            return
        st.info(f"The demo cohort ({DEFAULT_CASES} synthetic cases in BraTS 2021 layout, built from the MNI152 template) "
                f"is not generated yet. Each case takes about 3.5 CPU-seconds: under a minute on an idle 2-core machine, "
                f"several minutes when the CPU is busy. The progress shows each case as it is written and the time "
                f"left at this machine's pace; the app stays usable meanwhile.")
        if st.button("Generate the demo cohort", type="primary", key="gen_demo"):
            paths.data_dir().mkdir(parents=True, exist_ok=True)
            background.start_process("synth", ["synth"], paths.data_dir() / SYNTH_LOG, paths.data_dir() / SYNTH_LAUNCH)
            st.session_state["synth_started"] = time.time()
            st.rerun()
        return
    cases, skipped, error = state.discover(root)
    if error:
        st.error(error)
        st.caption("Choose another folder on the Data page.")
        return
    labelled = sum(c.labelled for c in cases)
    cols = st.columns([3, 1, 1, 1])
    cols[0].markdown(f"**Active dataset**  \n`{state.dataset_label(root)}`")
    cols[1].metric("Cases", len(cases))
    cols[2].metric("Labelled", labelled)
    cols[3].metric("Skipped", len(skipped))
    if not cases:
        st.warning("No BraTS-style case in this folder. Choose another on the Data page.")


def _runs_table() -> None:
    st.subheader("Runs and shipped checkpoints")
    views = state.list_run_views()
    if not views:
        st.info("No run yet. Launch one on the **Train** page (a 1-epoch autoencoder at 64 px takes about a minute on CPU).")
        return
    rows = []
    for v in views:
        cells = columns.overview_cells(eval_jobs.home_evaluation(v))  # one shaping of the metrics, shared with Compare
        pre = v.info.config.get("preprocess") or {}
        rows.append({
            # The name the user gave the run, with its folder; the folder alone otherwise.
            "run": f"{v.name} ({v.info.name})" if v.name != v.info.name else v.info.name,
            "model": v.info.model,
            "status": v.label,
            "progress": v.progress,
            **{k: c for k, c in cells.items() if k != "evaluated on"},
            "evaluated on": cells["evaluated on"],  # after the numbers: metrics stay visible without scrolling
            "epochs": f"{v.epochs_done}/{v.epochs}" if v.epochs else "",
            "input": " ".join(pre.get("modalities", [])) + (f" · {pre['image_size']} px" if pre.get("image_size") else ""),
            "trained on": v.info.training_data["name"],
            "tags": " ".join(v.tags),
            "source": "shipped" if v.info.shipped else "run",
        })
    df = pd.DataFrame(rows)
    # Widths in pixels, so names and numbers are not cut; the key columns first, the run's name pinned.
    st.dataframe(df, hide_index=True, width="stretch", placeholder="–", height=min(38 + 35 * len(df), 600), column_config={
        "run": st.column_config.TextColumn("run", width=230, pinned=True, help="the run's name (its folder), or its folder"),
        "model": st.column_config.TextColumn("model", width=100),
        "status": st.column_config.TextColumn("status", width=100, help="completed, time budget (stopped by its time "
                                              "budget), cancelled, failed, running, queued"),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent", width=95),
        **{columns.column(k).short: st.column_config.NumberColumn(format="%.3f", width=95, help=columns.column(k).help or None)
           for k in columns.OVERVIEW},
        "evaluated on": st.column_config.TextColumn("evaluated on", width=190, help="dataset and split of the metrics"),
        "epochs": st.column_config.TextColumn("epochs", width=85),
        "input": st.column_config.TextColumn("input", width=120),
        "trained on": st.column_config.TextColumn("trained on", width=330),
        "tags": st.column_config.TextColumn("tags", width=120),
        "source": st.column_config.TextColumn("source", width=80),
    })
    st.caption("Metrics come from each run's evaluation on its own training data (column 'evaluated on'; other "
               "datasets on the Compare page); – = not evaluated yet. "
               "Progress is 100 % for a run that ended as asked: all its epochs, or its whole time budget (status "
               "'time budget'; the epochs column says how far it got). "
               "*best Dice uses the test labels to choose its threshold: an upper bound, not a deployable result. "
               f"{columns.column(columns.dice_key(CASE_RATE)).short} uses a threshold set on healthy validation slices only. "
               "Shipped checkpoints come in two sets: trained on the synthetic demo cohort (`checkpoints/<model>`) "
               "and on 25 real glioma patients (`checkpoints/real/<model>`, research use under the BraTS terms; "
               "see the README). Explore picks the set that suits the active dataset.")


ui.page_header("Unsupervised anomaly detection in brain MRI",
               "Reconstruction models trained on healthy slices flag what they cannot reconstruct. "
               "Data → Train → Explore → Compare.")
_dataset_section()
_runs_table()
