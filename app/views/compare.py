"""Compare: ROC / PR curves of evaluated runs against the two baselines, and an operating point per model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import ui
from uad import jobs, metrics, report

MAX_DEFAULT = 3


def _evaluation_panel(pending: list[jobs.RunView]) -> None:
    """Runs without an evaluation: start `python -m uad evaluate` for them and follow it (never blocks the page)."""
    any_running = False
    for v in pending:
        state, log = jobs.eval_state(v)
        any_running |= state == "running"
        cols = st.columns([4, 2], vertical_alignment="center")
        cols[0].markdown(f"**{v.info.name}** · {v.info.model} · {v.state}")
        if state == "running":
            cols[1].progress(0.5, text="evaluating…")
            if log:
                st.caption(log.splitlines()[-1][-160:])
        elif state == "done":
            cols[1].success("evaluated")
        else:
            if state == "failed":
                st.error("The evaluation failed:")
                st.code(log or "(no output)", language=None)
            if cols[1].button("Evaluate", key=f"eval::{v.info.name}", disabled=v.active,
                              help="Runs `python -m uad evaluate` in the background: slice and pixel metrics on the test split"):
                jobs.launch_eval(v)
                st.rerun()
    done_now = [v for v in pending if jobs.eval_state(v)[0] == "done"]
    if done_now:
        # Whole page: the new evaluation joins the comparison, selected.
        chosen = st.session_state.get("compare_runs")
        if chosen is not None:
            st.session_state["compare_runs"] = [v.info.name for v in done_now] + list(chosen)
        st.rerun()
    if any_running != st.session_state.get("compare_eval_fast"):
        st.session_state["compare_eval_fast"] = any_running
        st.rerun()


def _label(v: jobs.RunView) -> str:
    return f"{v.info.model} · {v.info.name}"


def _metrics_table(chosen: list[tuple[jobs.RunView, dict]]) -> None:
    rows = []

    def row(name: str, m: dict) -> dict:
        return {
            "method": name,
            "slice AUROC [95% CI]": ui.fmt_ci(m.get("slice_auroc"), m.get("slice_auroc_ci")),
            "slice AP": ui.fmt(m.get("slice_ap")),
            "pixel AP [95% CI]": ui.fmt_ci(m.get("pixel_ap"), m.get("pixel_ap_ci")),
            "pixel AUROC": ui.fmt(m.get("pixel_auroc")),
            "best Dice*": ui.fmt((m.get("best_dice") or {}).get("dice")),
            **{f"Dice @{r:.0%} FPR": ui.fmt(report.at_fpr(m, r).get("dice")) for r in (0.01, 0.05, 0.10)},
        }

    for v, e in chosen:
        rows.append(row(_label(v), e["metrics"]))
    first = chosen[0][1]["metrics"]
    for b, m in (first.get("baselines") or {}).items():
        rows.append(row(ui.BASELINE_STYLE.get(b, (b,))[0], m))
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    notes = ["95% intervals: patient-level bootstrap.",
             "*best Dice picks its threshold on the test labels (an oracle upper bound).",
             "Dice @x% FPR: threshold set where x% of healthy validation pixels are flagged (what a user would deploy)."]
    splits = {tuple(e["metrics"].get("eval_cases") or []) for _, e in chosen}
    if len(splits) > 1:
        notes.append("⚠ The selected runs were evaluated on different test cases; baselines shown are those of the first run.")
    st.caption(" ".join(notes))


def _curve_fig(kind: str, level: str, chosen, points: dict[str, dict] | None) -> go.Figure:
    """ROC (kind='roc') or PR (kind='pr') curves at slice or pixel level, baselines dashed, operating points as dots."""
    key = f"{level}_{kind}"
    xk, yk = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
    data = []
    if kind == "roc":
        data.append(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#555555", width=1), showlegend=False, hoverinfo="skip"))
    first = chosen[0][1]["curves"]
    for b, (name, colour, dash) in ui.BASELINE_STYLE.items():
        c = (first.get(b) or {}).get(key)
        if c:
            data.append(go.Scatter(x=c[xk], y=c[yk], name=name, mode="lines", line=dict(color=colour, dash=dash, width=1.5)))
    for i, (v, e) in enumerate(chosen):
        colour = ui.MODEL_COLOURS[i % len(ui.MODEL_COLOURS)]
        model_curves = e["curves"].get(e["metrics"].get("model", v.info.model)) or {}
        c = model_curves.get(key)
        if c:
            data.append(go.Scatter(x=c[xk], y=c[yk], name=_label(v), mode="lines", line=dict(color=colour, width=2.5)))
        p = (points or {}).get(v.info.name)
        if p:
            x, y = (p["fpr"], p["recall"]) if kind == "roc" else (p["recall"], p["precision"])
            if np.isfinite(x) and np.isfinite(y):
                data.append(go.Scatter(x=[x], y=[y], mode="markers", showlegend=False, name=f"{_label(v)} operating point",
                                       marker=dict(color=colour, size=13, line=dict(color="white", width=2))))
    titles = ("false-positive rate", "true-positive rate (recall)") if kind == "roc" else ("recall", "precision")
    return go.Figure(data=data, layout=ui.layout(
        380, xaxis=dict(title=dict(text=titles[0]), range=[0, 1]), yaxis=dict(title=dict(text=titles[1]), range=[0, 1.02])))


def _distribution_fig(slices: pd.DataFrame, thr: float, colour: str) -> go.Figure:
    lo, hi = float(slices.score.min()), float(slices.score.max()) + 1e-9
    bins = dict(start=lo, end=hi, size=(hi - lo) / 40)
    data = [go.Histogram(x=slices.score[slices.label == lab].to_numpy(), name=name, marker_color=c, opacity=0.65, xbins=bins)
            for lab, name, c in ((0, "healthy slices", "#AAAAAA"), (1, "tumour slices", colour))]
    return go.Figure(data=data, layout=ui.layout(230, barmode="overlay", shapes=[ui.vline(thr, dash="dash")],
                                                 xaxis=dict(title=dict(text="slice score")), yaxis=dict(title=dict(text="slices"))))


def _operating_panel(v: jobs.RunView, e: dict, i: int) -> dict:
    slices = e["slices"]
    labels, scores = slices.label.to_numpy(), slices.score.to_numpy()
    lo, hi = float(scores.min()), float(scores.max())
    key = f"cmp_thr::{v.info.name}"
    if key not in st.session_state:
        youden = (e["metrics"].get("slice_youden") or {}).get("threshold")
        st.session_state[key] = float(np.clip(youden if youden is not None else np.median(scores), lo, hi))
    colour = ui.MODEL_COLOURS[i % len(ui.MODEL_COLOURS)]
    st.markdown(f"<span style='color:{colour};font-size:1.3em'>●</span> **{_label(v)}**", unsafe_allow_html=True)
    thr = st.slider("Slice-score threshold", lo, hi if hi > lo else lo + 1e-6, step=max((hi - lo) / 500, 1e-9), format="%.4f", key=key,
                    help="A slice is called anomalous when its score is at or above this value. Starts at Youden's J.")
    p = metrics.operating_point(labels, scores, thr)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Precision", ui.fmt(p["precision"]))
    c2.metric("Recall", ui.fmt(p["recall"]))
    c3.metric("F1", ui.fmt(p["f1"]))
    c4.metric("Specificity", ui.fmt(p["specificity"]))
    st.dataframe(pd.DataFrame({"predicted tumour": [p["tp"], p["fp"]], "predicted healthy": [p["fn"], p["tn"]]},
                              index=["tumour slices", "healthy slices"]), width="stretch")
    st.plotly_chart(_distribution_fig(slices, thr, colour), width="stretch", key=f"dist::{v.info.name}", config={"displayModeBar": False})
    return p


@st.fragment
def _interactive(chosen: list[tuple[jobs.RunView, dict]]) -> None:
    # A fragment: moving a threshold reruns only the slice-level curves and the operating points.
    with ui.timed("compare_interactive"):
        _interactive_body(chosen)


def _interactive_body(chosen: list[tuple[jobs.RunView, dict]]) -> None:
    curves = st.container()  # first on screen, drawn last: it shows the points the sliders below set
    st.markdown("##### Operating points")
    points = {}
    cols = st.columns(max(2, min(len(chosen), 3)))  # one model: half width, not stretched across the page
    for i, (v, e) in enumerate(chosen):
        with cols[i % len(cols)]:
            points[v.info.name] = _operating_panel(v, e, i)
    with curves:
        a, b = st.columns(2)
        a.plotly_chart(_curve_fig("roc", "slice", chosen, points), width="stretch", key="slice_roc")
        b.plotly_chart(_curve_fig("pr", "slice", chosen, points), width="stretch", key="slice_pr")
        st.caption("Dots: each model's operating point at its threshold below. Dashed/dotted: baselines.")


def _curves(chosen: list[tuple[jobs.RunView, dict]]) -> None:
    st.subheader("Curves")
    slice_tab, pixel_tab = st.tabs(["Slice level (with operating points)", "Pixel level"])
    with pixel_tab:
        a, b = st.columns(2)
        a.plotly_chart(_curve_fig("roc", "pixel", chosen, None), width="stretch", key="pixel_roc")
        b.plotly_chart(_curve_fig("pr", "pixel", chosen, None), width="stretch", key="pixel_pr")
        st.caption("Pixel level: every pixel inside the eroded brain mask of the test cases. Dashed/dotted: baselines.")
    with slice_tab:
        _interactive(chosen)


def _page() -> None:
    views = [v for v in ui.list_run_views() if v.has_checkpoint]
    if not views:
        st.info("No run with a checkpoint yet: train one on the **Train** page.")
        return
    evaluated, pending, broken = [], [], []
    for v in views:
        e = ui.read_eval(v)
        if e is None:
            pending.append(v)
        elif e.get("error"):
            broken.append((v, e["error"]))
        else:
            evaluated.append((v, e))
    for v, msg in broken:
        st.error(msg)
    if pending:
        with st.expander(f"{len(pending)} run(s) not evaluated yet", expanded=not evaluated):
            fast = any(jobs.eval_state(v)[0] == "running" for v in pending)
            st.session_state["compare_eval_fast"] = fast
            st.fragment(run_every=2 if fast else None)(_evaluation_panel)(pending)
    if not evaluated:
        st.info("Evaluate a run above to compare it.")
        return
    names = [v.info.name for v, _ in evaluated]
    kept = st.session_state.get("compare_runs")
    if kept and any(n not in names for n in kept):
        st.warning("No longer available (deleted, moved or its evaluation unreadable): "
                   + ", ".join(n for n in kept if n not in names))
        st.session_state["compare_runs"] = [n for n in kept if n in names]
    if "compare_runs" not in st.session_state:
        st.session_state["compare_runs"] = names[:MAX_DEFAULT]  # (state, not default=: the page also edits it)
    picked = st.multiselect("Runs to compare", names, key="compare_runs",
                            format_func=lambda n: _label(next(v for v, _ in evaluated if v.info.name == n)))
    chosen = [(v, e) for v, e in evaluated if v.info.name in picked]
    if not chosen:
        st.info("Choose at least one run.")
        return
    st.subheader("Metrics on the test split")
    _metrics_table(chosen)
    _curves(chosen)


ui.page_header("Compare", "Models against the intensity and brain-area baselines; move a threshold to see its trade-off.")
_page()
