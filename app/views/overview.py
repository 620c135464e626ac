"""Overview: the active dataset (generating the demo cohort if missing) and every run with its key metrics."""

from __future__ import annotations

import time

import pandas as pd
import state
import streamlit as st
import ui
from safe import code, md

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
        st.error("The demo generator stopped before finishing.")
        if log:
            st.code(log, language=None)


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
        st.error(md(error))
        st.caption("Choose another folder on the Data page.")
        return
    labelled = sum(c.labelled for c in cases)
    cols = st.columns([3, 1, 1, 1])
    cols[0].markdown(f"**Active dataset**  \n{code(state.dataset_label(root))}")
    cols[1].metric("Cases", len(cases))
    cols[2].metric("Labelled", labelled)
    cols[3].metric("Skipped", len(skipped))
    if not cases:
        st.warning("No BraTS-style case in this folder. Choose another on the Data page.")


RUN_WIDTH = (140, 220)  # px: the pinned run column fits names up to about 28 characters
# The columns on screen at 1280 px (820 px beside the sidebar): run, status, where the numbers come from, the
# headline metrics. Everything else about a run is in the details of the selected row.
STATUS_WIDTH, WHERE_WIDTH = 95, 160
METRIC_WIDTHS = {"slice_auroc": 88, "pixel_ap": 70, "best_dice": 80}  # px, by header; others 100


def _details(v, summary) -> pd.DataFrame:
    """Everything the table leaves out about one run, as text (names and tags are data, never Markdown)."""
    pre = v.info.config.get("preprocess") or {}
    row = columns.summary_row(summary.model, summary.raw) if summary is not None else {}
    items = [("name", v.name), ("folder", v.info.name), ("model", v.info.model), ("status", v.outcome),
             ("epochs", f"{v.epochs_done}/{v.epochs}" if v.epochs else "–"),
             ("input", " ".join(pre.get("modalities", [])) + (f" · {pre['image_size']} px" if pre.get("image_size") else "")),
             ("trained on", v.info.training_data["name"]), ("tags", " ".join(v.tags) or "–"),
             ("source", "shipped checkpoint" if v.info.shipped else "run"),
             ("evaluated on", summary.where if summary is not None else "not evaluated yet")]
    items += [(c.short, ui.fmt(row.get(c.key), c.digits)) for c in columns.METRICS] if summary is not None else []
    return pd.DataFrame(items, columns=["", "value"])


def _runs_table() -> None:
    st.subheader("Runs and shipped checkpoints")
    views = state.list_run_views(warn=True)
    if not views:
        st.info("No run yet. Launch one on the **Train** page (a 1-epoch autoencoder at 64 px takes about a minute on CPU).")
        return
    rows, summaries_ = [], []
    for v in views:
        summary = eval_jobs.home_evaluation(v)
        summaries_.append(summary)
        cells = columns.overview_cells(summary)  # one shaping of the metrics, shared with Compare
        rows.append({
            "run": v.name,
            "status": v.label if v.state != "running" else f"running {v.progress:.0%}",
            "evaluated on": cells.pop("evaluated on") or "–",  # beside the numbers it explains
            **cells,
        })
    df = pd.DataFrame(rows)
    longest = max(len(r) for r in df.run)
    run_width = int(min(max(7 * longest + 24, RUN_WIDTH[0]), RUN_WIDTH[1]))
    event = st.dataframe(df, hide_index=True, width="stretch", placeholder="–", height=min(38 + 35 * len(df), 600),
                         on_select="rerun", selection_mode="single-row", key="overview_runs", column_config={
        "run": st.column_config.TextColumn("run", width=run_width, pinned=True, help="the run's name (its folder when unnamed)"),
        "status": st.column_config.TextColumn("status", width=STATUS_WIDTH, help="completed, time budget (stopped by its time "
                                              "budget), cancelled, failed, running, queued, shipped"),
        "evaluated on": st.column_config.TextColumn("evaluated on", width=WHERE_WIDTH, help="the dataset and split the "
                                                    "numbers on this row come from"),
        **{columns.column(k).short: st.column_config.NumberColumn(format="%.3f", width=METRIC_WIDTHS.get(k, 100),
                                                                  help=columns.column(k).help or None)
           for k in columns.OVERVIEW},
    })
    st.caption("Each row's numbers come from one evaluation: the run's evaluation on the data it was trained on where "
               "there is one, otherwise its newest, on whatever dataset that was: 'evaluated on' names it (every "
               "evaluation, on every dataset, is on the Compare page); – = not evaluated yet. "
               "*best Dice uses the test labels to choose its threshold: an upper bound, not a deployable result. "
               f"{columns.column(columns.dice_key(CASE_RATE)).short} uses a threshold set on healthy validation slices only. "
               "Select a row for the run's details (model, epochs, input, training data, tags, every metric).")
    picked = event.selection.rows if event is not None and hasattr(event, "selection") else []
    if picked:
        v = views[picked[0]]
        st.dataframe(_details(v, summaries_[picked[0]]), hide_index=True, width=720, key="overview_details",
                     column_config={"": st.column_config.TextColumn("", width=140),
                                    "value": st.column_config.TextColumn("value", width=560)})
    st.caption("Shipped checkpoints come in two sets: trained on the synthetic demo cohort (`checkpoints/<model>`) and "
               "on 25 real glioma patients (`checkpoints/real/<model>`, research use under the BraTS terms; see the "
               "README). Explore picks the set that suits the active dataset. Progress: 100 % for a run that ended as "
               "asked, all its epochs or its whole time budget (status 'time budget').")


ui.page_header("Unsupervised anomaly detection in brain MRI",
               "Reconstruction models trained on healthy slices flag what they cannot reconstruct. "
               "Data → Train → Explore → Compare.")
_dataset_section()
_runs_table()
