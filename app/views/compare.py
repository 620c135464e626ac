"""Compare: evaluated runs on one dataset and split, against the baselines computed on the same slices;
ROC / PR curves, an operating point per model (``threshold.py``: computed and drawn in the browser), the
per-case table (a click opens the case in Explore), the HTML report and a configuration diff."""

from __future__ import annotations

import evals
import numpy as np
import pandas as pd
import state
import streamlit as st
import threshold
import ui
from safe import code, md

from uad.data import identity
from uad.evaluation import columns, figures, summaries
from uad.jobs import eval_jobs, run_jobs
from uad.runs import configs
from uad.scoring.recipe import CASE_RATE, rate_label

MAX_DEFAULT = 3


def _label(v: run_jobs.RunView) -> str:
    """Plain text (select boxes, tables); ``md`` for Markdown, ``plot_text`` for plotly."""
    return f"{v.info.model} · {v.info.name}"


# -- which dataset --------------------------------------------------------------------------------------------
def _choose_dataset(found: dict[str, list[summaries.EvaluationSummary]], root) -> tuple[str, str] | None:
    """The (dataset id, split) to compare on: the user's choice (kept across pages while the active dataset stays
    the same), else the active dataset's, else the most evaluated one; and the active dataset's as soon as it
    gains an evaluation here (e.g. one started with the Evaluate button above). Every number below comes from
    this one dataset and split."""
    counts: dict[tuple[str, str], int] = {}
    labels: dict[tuple[str, str], str] = {}
    for evals_ in found.values():
        for s in {s.key: s for s in evals_}.values():
            counts[s.key] = counts.get(s.key, 0) + 1
            labels[s.key] = s.where
    if not counts:
        return None
    ss = st.session_state
    active = identity.dataset_ref(root).id
    keys = sorted(counts, key=lambda k: (k[0] != active, -counts[k], labels[k]))
    before = ss.get("compare_counts")  # {key: runs evaluated there} at the last visit
    grown = [k for k in keys if k[0] == active and before is not None and counts[k] > before.get(k, 0)]
    kept = ss.get("compare_dataset_kept")  # (key, active dataset id when chosen): the widget's state is dropped off-page
    if grown:
        choice = grown[0]
    elif ss.get("compare_dataset") in keys:
        choice = ss["compare_dataset"]
    elif kept and kept[0] in keys and kept[1] == active:
        choice = kept[0]
    else:
        choice = keys[0]
    ss["compare_dataset"] = choice
    ss["compare_counts"] = counts
    key = st.selectbox("Evaluated on", keys, key="compare_dataset",
                       format_func=lambda k: f"{labels[k]} · {counts[k]} run{'s' if counts[k] != 1 else ''}"
                                             + ("  (active dataset)" if k[0] == active else ""),
                       help="Metrics, curves, baselines and the per-case table all come from this dataset and split.")
    ss["compare_dataset_kept"] = (key, active)
    return key


def _evaluate_panel(views: list[run_jobs.RunView], found, root) -> None:
    """Runs not evaluated on the active folder: evaluate them there in the background, with progress."""
    active = identity.dataset_ref(root)
    pending = [v for v in views if summaries.pick(found[v.info.name], active.id) is None]
    if not pending:
        return
    with st.expander(f"{len(pending)} run(s) not evaluated on the active dataset, {md(active.label)}",
                     expanded=not any(found.values())):
        st.caption(f"Active dataset (Data page): {code(active.root)}. On a run's own training data the evaluation scores its "
                   "recorded test patients; on any other folder it scores every case, with thresholds calibrated on "
                   "that folder's own healthy slices.")
        for v in pending:
            st.markdown(f"**{md(_label(v))}** · {md(v.state)}")
            evals.evaluate_control(v, root, "compare")


# -- tables ---------------------------------------------------------------------------------------------------
def _metrics_table(chosen) -> None:
    rows = columns.comparison_rows([(_label(v), s) for v, s, _ in chosen])
    st.dataframe(pd.DataFrame([columns.cells(r) for r in rows]), hide_index=True, width="stretch",
                 column_config={"method": st.column_config.TextColumn("method", pinned=True),  # stays in view when scrolled
                                **{c.label: st.column_config.TextColumn(c.label, help=c.help or None) for c in columns.METRICS}})
    groups = {r["group"] for r in rows if r.get("kind") == "baseline"}
    notes = [columns.TABLE_NOTES,
             "Baselines are computed on the same slices and pixels as each model; they depend on the dataset, split, "
             "evaluated cases, image size and channels, so runs that differ in these get their own baseline rows, "
             "labelled by what differs."]
    if len(groups) > 1:
        notes.append("⚠ The selected runs were not evaluated on identical slices: compare each to its own baselines.")
    st.caption(" ".join(notes))
    for v, s, _ in chosen:  # what produced each row: recipe, weights, thresholds; stale when the weights changed
        current = state.weights_sha256(v.path)
        st.text(("⚠ " if s.staleness(current) else "") + f"{_label(v)}: {s.provenance(current)}")  # text: names are data
        if s.drift_warning:
            st.text(f"⚠ {_label(v)}, drift check: {s.drift_warning}")


@st.cache_data(show_spinner=False, max_entries=16)
def _pairs(items: tuple[tuple[str, str, int], ...]) -> tuple[list[dict[str, str]], list[str]]:
    """Paired differences of the evaluations in ``items`` (label, folder, mtime of cases.npz: a new evaluation
    is a new key), as uad computes them for ``uad compare``."""
    from uad.evaluation import paired

    read = [(label, summaries.EvaluationSummary.read(folder)) for label, folder, _ in items]
    pairs, notes = paired.evaluation_pairs(read)
    return [r for a, b, diffs in pairs for r in paired.difference_rows(a, b, diffs)], notes


def _paired_table(chosen) -> None:
    st.subheader("Paired differences")
    st.caption("Each model against the intensity baseline, and against the best model by pixel AP among those scored on "
               "the same slices: A − B on the same patients, with a 95 % paired patient-level bootstrap interval (each "
               "resample draws patients once for both methods). A difference is called only when its interval excludes "
               "zero, with at least 5 patients.")
    items = []
    for v, s, _ in chosen:
        npz = s.folder / "cases.npz" if s.folder is not None else None
        try:
            items.append((_label(v), str(s.folder), npz.stat().st_mtime_ns if npz is not None else 0))
        except OSError:
            items.append((_label(v), str(s.folder), 0))
    with st.spinner("Bootstrapping the paired differences…"):
        try:
            rows, notes = _pairs(tuple(items))
        except ValueError as exc:
            st.error(md(str(exc)))
            return
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={c: st.column_config.TextColumn(c) for c in rows[0]})
    for note in notes:
        st.text(f"No paired differences for {note}")


def _cases_table(chosen, root_of) -> None:
    st.subheader("Per case")
    names = [v.info.name for v, _, _ in chosen]
    if st.session_state.get("compare_cases_run") not in names:
        st.session_state["compare_cases_run"] = names[0]
    name = st.selectbox("Run", names, key="compare_cases_run", format_func=lambda n: _label(next(v for v, _, _ in chosen if v.info.name == n)))
    v, s, _ = next(c for c in chosen if c[0].info.name == name)
    try:
        df = s.cases()
    except ValueError as exc:
        st.error(md(exc))
        return
    if df is None:
        st.info(f"This evaluation of {md(name)} predates per-case tables: evaluate it again to get one.")
        return
    thr = s.calibration.threshold(CASE_RATE)
    spec = [c for c in columns.CASES if c.key in df.columns]
    config = {"case_id": st.column_config.TextColumn("case"), "labelled": st.column_config.CheckboxColumn("labelled")}
    config |= {c.key: st.column_config.NumberColumn(c.label, format=f"%.{c.digits}f", help=c.help or None) for c in spec}
    event = st.dataframe(
        df[[k for k in ("case_id", "labelled") if k in df.columns] + [c.key for c in spec]], hide_index=True, width="stretch",
        key=f"cases::{s.key}::{name}", on_select="rerun", selection_mode="single-row", column_config=config)
    note = s.raw.get("cases_note") or ""
    st.caption(f"{md(s.where)}; calibrated threshold {ui.fmt(thr, 4)} ({rate_label(CASE_RATE)} healthy FPR). "
               f"{md(note[:1].upper() + note[1:])}. Click a column header to sort; select a row to open that case in Explore.")
    rows = (event.selection.rows if event is not None and hasattr(event, "selection") else [])
    if rows:
        evals.open_in_explore(name, str(df.iloc[rows[0]]["case_id"]), root_of(s))


def _report_buttons(chosen) -> None:
    from uad.evaluation import html_report

    st.subheader("HTML report")
    st.caption("One self-contained file per run (works offline): metrics with intervals and baselines, curves, the per-case "
               "table and example slices of the best and worst cases. Built when clicked (a few seconds: the examples "
               "are scored again).")
    cols = st.columns(min(len(chosen), 3))
    for i, (v, s, _) in enumerate(chosen):
        cols[i % len(cols)].download_button(
            f"Report: {md(v.info.name)}", data=lambda v=v, s=s: html_report.build_report(s, run=v.path).encode("utf-8"),
            file_name=f"uad-report-{v.info.name.replace('/', '-')}-{s.dataset.id}-{s.split}.html", mime="text/html",
            key=f"report::{v.info.name}", icon=":material/description:", width="stretch")


def _config_diff(views: list[run_jobs.RunView], chosen) -> None:
    st.subheader("Configuration diff")
    names = [v.info.name for v in views]
    if len(names) < 2:
        st.caption("Needs two runs.")
        return
    picked = [v.info.name for v, _, _ in chosen][:2]
    defaults = picked + [n for n in names if n not in picked][: 2 - len(picked)]
    a_col, b_col = st.columns(2)
    a = a_col.selectbox("Run A", names, index=names.index(defaults[0]), key="diff_a")
    b = b_col.selectbox("Run B", names, index=names.index(defaults[1]), key="diff_b")
    va, vb = (next(v for v in views if v.info.name == n) for n in (a, b))
    rows = configs.config_diff(va.info.config, vb.info.config)
    if a == b:
        st.caption("Choose two different runs.")
    elif not rows:
        st.success("Same configuration (config.json).")
    else:
        st.dataframe(pd.DataFrame(rows).rename(columns={"a": f"A: {a}", "b": f"B: {b}"}), hide_index=True, width="stretch")
        st.caption(f"{len(rows)} differing keys of config.json (nested keys joined by dots).")


# -- curves and operating points -------------------------------------------------------------------------------
def _baseline_groups(chosen) -> list[tuple[str, dict]]:
    """Baseline curves once per group of identical slices (see columns.comparison_rows), never "the first run's"."""
    groups: dict[tuple, tuple[str, dict]] = {}
    for v, s, e in chosen:
        groups.setdefault(s.baseline_group, (f"{s.image_size} px", e["curves"]))
    ordered = sorted(groups.values(), key=lambda t: t[0])
    return [(words if len(ordered) > 1 else "", curves) for words, curves in ordered]


def _curve_fig(kind: str, level: str, chosen, colours: dict[str, str], where: str):
    """ROC or PR curves (baselines dashed), titled with what they show: a download says which data and runs."""
    series = [figures.CurveSeries(_label(v), e["curves"].get(s.model) or {}, colours[v.info.name]) for v, s, e in chosen]
    return figures.curve_figure(kind, level, series, _baseline_groups(chosen), title=figures.curve_title(kind, level),
                                subtitle=f"{where} · " + ", ".join(v.info.name for v, _, _ in chosen))


def _operating_points(chosen, colours, where: str, key: tuple[str, str]) -> None:
    """Slice-level ROC and PR with an operating point per model, its threshold, numbers, confusion matrix and
    score distribution: computed and drawn in the browser (``threshold.py``), so a threshold move reruns nothing."""
    models = []
    for v, s, e in chosen:
        slices = e["slices"]
        labels, scores = slices.label.to_numpy(), slices.score.to_numpy(np.float64)
        presets = threshold.presets(s.raw)
        start = presets[0][1] if presets else float(np.median(scores))  # Youden's J when recorded
        models.append(threshold.Model(v.info.name, _label(v), colours[v.info.name], labels, scores,
                                      e["curves"].get(s.model) or {}, presets, start))
    with ui.timed("compare_thresholds"):
        threshold.show(models, _baseline_groups(chosen), where, storage_key=f"uad-compare::{key[0]}::{key[1]}",
                       key="compare_thresholds", style=ui.figure_style())


def _curves(chosen, colours, where: str, key: tuple[str, str]) -> None:
    st.subheader("Curves")
    slice_tab, pixel_tab = st.tabs(["Slice level (with operating points)", "Pixel level"])
    with pixel_tab:
        a, b = st.columns(2)
        runs = "+".join(v.info.name for v, _, _ in chosen)
        for col, kind in ((a, "roc"), (b, "pr")):
            with col:
                ui.plot(_curve_fig(kind, "pixel", chosen, colours, where), key=f"pixel_{kind}",
                        name=figures.file_stem(figures.curve_title(kind, "pixel"), where, runs))
        st.caption("Pixel level: every pixel inside the eroded brain mask of the evaluated cases. Dashed/dotted: baselines.")
    with slice_tab:
        _operating_points(chosen, colours, where, key)


# -- the page ---------------------------------------------------------------------------------------------------
def _choose_runs(names: list[str], evaluated, key: tuple[str, str]) -> list[str]:
    """The runs compared on this dataset and split: the user's selection, kept per dataset in a key no widget owns
    (Streamlit drops a widget's state when the page is left); at first the first ``MAX_DEFAULT``; a run evaluated
    here since the last visit (e.g. with the Evaluate button above) joins it; a run gone is dropped, with a word."""
    ss = st.session_state
    kept_all = ss.setdefault("compare_kept_runs", {})  # {"dataset id|split": [run folder names]}
    seen_all = ss.setdefault("compare_seen_runs", {})
    k = "|".join(key)
    if ss.get("compare_runs_for") == key and isinstance(ss.get("compare_runs"), list):
        kept_all[k] = list(ss["compare_runs"])  # the widget's value, as the user left it (or just changed it)
    if k not in kept_all:
        kept_all[k] = names[:MAX_DEFAULT]
    else:
        kept_all[k] += [n for n in names if n not in seen_all.get(k, names) and n not in kept_all[k]]
    seen_all[k] = names
    gone = [n for n in kept_all[k] if n not in names]
    if gone:
        st.warning("No longer available (deleted, moved or its evaluation unreadable): " + ", ".join(gone))
        kept_all[k] = [n for n in kept_all[k] if n in names]
    ss["compare_runs_for"] = key
    ss["compare_runs"] = kept_all[k]
    picked = st.multiselect("Runs to compare", names, key="compare_runs",
                            format_func=lambda n: _label(next(v for v, _, _ in evaluated if v.info.name == n)))
    kept_all[k] = list(picked)
    return picked


def _page() -> None:
    views = [v for v in state.list_run_views(warn=True) if v.has_checkpoint]
    if not views:
        st.info("No run with a checkpoint yet: train one on the **Train** page.")
        return
    root = state.active_root()
    found = {v.info.name: eval_jobs.evaluations(v) for v in views}
    colours = ui.run_colours([v.info.name for v in views])
    _evaluate_panel(views, found, root)
    key = _choose_dataset(found, root)
    if key is None:
        st.info("No run is evaluated yet: evaluate one above to compare it.")
        return
    in_key = [(v, summaries.pick(found[v.info.name], *key)) for v in views]
    in_key = [(v, s) for v, s in in_key if s is not None]
    first = in_key[0][1]
    st.caption(f"Dataset folder: {code(first.dataset.root or '(not recorded)')} · {md(summaries.SPLIT_WORDS.get(key[1], key[1]))}"
               + ("" if key[0] == identity.dataset_ref(root).id else f" · the active dataset is another folder: {code(root)}"))
    evaluated, broken = [], []
    for v, s in in_key:
        e = state.read_eval(s)
        (broken if e.get("error") else evaluated).append((v, s, e))
    for _, _, e in broken:
        st.error(md(e["error"]))
    names = [v.info.name for v, _, _ in evaluated]
    if not names:
        return
    picked = _choose_runs(names, evaluated, key)
    chosen = [c for c in evaluated if c[0].info.name in picked]
    if not chosen:
        st.info("Choose at least one run.")
        return
    st.subheader(f"Metrics on {md(first.where)}")
    _metrics_table(chosen)
    _paired_table(chosen)
    _curves(chosen, colours, first.where, key)
    _cases_table(chosen, lambda s: str(s.local_root or root))
    _report_buttons(chosen)
    _config_diff(views, chosen)


ui.page_header("Compare", "Models against the intensity and brain-area baselines on one dataset; move a threshold to see "
                          "its trade-off, open a case in Explore, download a report.")
_page()
