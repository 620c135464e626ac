"""Explore: where a model sees anomalies in one case, against the tumour mask, slice by slice."""

from __future__ import annotations

import numpy as np
import streamlit as st

import evals
import ui
from uad import jobs, metrics, runs
from uad.data.demo import demo_ready
from uad.data.preprocess import WorkingCase
from uad.score import nifti_bytes, threshold_maps

DISPLAY_PX = 256  # working-size slices are enlarged to about this many pixels (crisp contours, cheap PNGs)


def _presets(v: jobs.RunView, root) -> list[tuple[float, float]]:
    """(healthy FPR, threshold) pairs calibrated on the healthy slices of the ACTIVE dataset by the run's
    evaluation there ([] when it was never evaluated there); says on the page which evaluation they come
    from, or offers to evaluate the run on the active folder (app/evals.py)."""
    presets, summary = evals.presets(v, root)
    evals.presets_notice(v, root, summary)
    return presets


def _set(key: str, value) -> None:
    st.session_state[key] = value


@st.fragment
def _viewer(prep: WorkingCase, vs, presets: list[tuple[float, float]], vmax: float, hi: float, modalities: list[str], key: str) -> None:
    # A fragment: moving a slider reruns only this, not the page.
    with ui.timed("explore_viewer"):
        _viewer_body(prep, vs, presets, vmax, hi, modalities, key)


def _viewer_body(prep: WorkingCase, vs, presets: list[tuple[float, float]], vmax: float, hi: float, modalities: list[str], key: str) -> None:
    S = len(prep.slice_index)
    thr_key, slice_key = f"thr::{key}", f"slice::{key}"
    if thr_key not in st.session_state:
        near5 = [t for r, t in presets if abs(r - 0.05) < 1e-9]
        st.session_state[thr_key] = float(np.clip(near5[0] if near5 else vmax * 0.5, 0.0, hi))
    st.session_state[thr_key] = min(float(st.session_state[thr_key]), hi)  # the range follows a retrained checkpoint
    if slice_key not in st.session_state:
        best = int(np.argmax(prep.tumour_pixels)) if prep.labelled and prep.tumour_pixels.any() else int(np.argmax(vs.scores))
        st.session_state[slice_key] = int(prep.slice_index[best])

    c_slice, c_thr = st.columns([1, 1])
    lo_i, hi_i = int(prep.slice_index.min()), int(prep.slice_index.max())
    k_src = c_slice.slider("Axial slice", lo_i, hi_i, key=slice_key)
    k = int(np.argmin(np.abs(prep.slice_index - k_src)))
    thr = c_thr.slider("Threshold on the anomaly map", 0.0, hi, step=hi / 1000, format="%.4f", key=thr_key)
    if presets:
        cols = c_thr.columns(len(presets) + 1)
        cols[0].caption("Presets (healthy FPR):")
        for col, (rate, t) in zip(cols[1:], presets):
            col.button(f"{rate:.0%} · {t:.3f}", key=f"preset::{key}::{rate}", on_click=_set, args=(thr_key, min(t, hi)),
                       help=f"Threshold at which {rate:.0%} of healthy validation pixels are flagged", width="stretch")
    else:
        c_thr.caption("No calibrated presets: evaluate this run on the Compare page for thresholds set on healthy slices.")

    channel = 0
    if len(modalities) > 1:
        channel = modalities.index(st.radio("Channel shown", modalities, horizontal=True, key=f"chan::{key}"))
    scale = max(1, round(DISPLAY_PX / prep.images.shape[-1]))
    image = prep.images[k, channel]
    truth = (prep.tumour[k] & vs.mask[k]) if prep.labelled else None
    pred = threshold_maps(vs.maps[k], thr) & vs.mask[k]

    st.markdown(f"**Slice {int(prep.slice_index[k])}** ({k + 1} of {S} kept slices) · slice score {vs.scores[k]:.4f}"
                + ("" if prep.labelled else " · unlabelled case"))
    c1, c2, c3, c4 = st.columns(4)
    c1.image(ui.png(ui.grey(image, scale, vmax=1.0)), caption=f"Input ({modalities[channel].upper()})", width="stretch")
    if vs.reconstruction is not None:
        c2.image(ui.png(ui.grey(np.clip(vs.reconstruction[k, channel], 0, 1), scale, vmax=1.0)), caption="Reconstruction",
                 width="stretch")
    else:
        c2.info("This model gives no reconstruction.")
    heat = ui.heat_overlay(image, vs.maps[k], vmax, scale)
    if prep.labelled:
        ui.draw_contour(heat, prep.tumour[k], ui.GT_CONTOUR, scale, 2)
    c3.image(ui.png(heat), caption="Anomaly map" + (" + tumour outline" if prep.labelled else ""), width="stretch")
    c4.image(ui.png(ui.pred_vs_truth(image, pred, truth, scale)), caption=f"Map ≥ {thr:.4f}" + (" vs ground truth" if prep.labelled else ""),
             width="stretch")

    leg, bar = st.columns([3, 2])
    with leg:
        if prep.labelled:
            ui.legend([(ui.GT_CONTOUR, "tumour outline"), (ui.PRED_COLOURS["TP"], "detected tumour (TP)"),
                       (ui.PRED_COLOURS["FP"], "false alarm (FP)"), (ui.PRED_COLOURS["FN"], "missed tumour (FN)")])
        else:
            ui.legend([(ui.PRED_COLOURS["FP"], "flagged as anomalous")])
    with bar:
        ui.colourbar(vmax)

    m1, m2, m3, m4 = st.columns(4)
    if prep.labelled:
        pred_vol = threshold_maps(vs.maps, thr) & vs.mask
        truth_vol = prep.tumour & vs.mask
        m1.metric("Dice · this slice", ui.fmt(metrics.dice(pred, truth)))
        m2.metric("Dice · whole volume", ui.fmt(metrics.dice(pred_vol, truth_vol)))
        m3.metric("Flagged pixels · slice", int(pred.sum()))
        m4.metric("Tumour pixels · slice", int(truth.sum()))
        st.caption("Dice is computed inside the eroded brain mask, as in evaluation; '–' = no tumour and nothing flagged.")
    else:
        m1.metric("Flagged pixels · slice", int(pred.sum()))
        m2.metric("Flagged pixels · volume", int((threshold_maps(vs.maps, thr) & vs.mask).sum()))
        st.caption("Unlabelled case: no ground truth, so no Dice.")

    bars = {}
    if prep.labelled:
        frac = prep.tumour_pixels / max(float(prep.tumour_pixels.max()), 1.0)
        bars["tumour (ground truth)"] = (frac, ui.GT_CONTOUR)
    fig = ui.slice_strip(prep.slice_index, bars, int(prep.slice_index[k]), line=(vs.scores, "slice score"), threshold=thr, height=190)
    st.plotly_chart(fig, width="stretch", key=f"strip::{key}", config={"displayModeBar": False})


def _download(v: jobs.RunView, prep: WorkingCase, vs, case_id: str) -> None:
    # Built only when clicked: the inverse resampling to the source grid takes a fraction of a second.
    st.download_button("Download this volume's anomaly map (NIfTI, source grid)", data=lambda: nifti_bytes(vs.maps, prep.geometry),
                       file_name=f"{case_id}_{v.info.model}_anomaly.nii.gz", mime="application/gzip", key="explore_download",
                       icon=":material/download:")


def _page() -> None:
    # -- evaluation hand-off (owned by the evaluation/report work: keep these lines first in the page body) ----
    # Compare's per-case table opens a case here: it sets st.session_state["explore_request"] = {"run": <run name
    # as listed here>, "case": <case id>, "root": <dataset folder>} and calls st.switch_page("views/explore.py").
    # take_explore_request() pops it before anything is drawn: that folder becomes the active dataset and the
    # selectors keyed "explore_run" / "explore_case" start on that run and case (they must honour session state).
    evals.take_explore_request()
    # ------------------------------------------------------------------------------------------------------------
    views = [v for v in ui.list_run_views() if v.has_checkpoint]
    if not views:
        st.info("No run with a checkpoint yet: train one on the **Train** page (or ship checkpoints in `checkpoints/`).")
        return
    root = ui.active_root()
    if ui.is_demo(root) and not demo_ready():
        st.info("The demo cohort is not generated yet: generate it on the Overview page, or choose a folder on the Data page.")
        return
    cases, _, error = ui.discover(root)
    if error or not cases:
        st.error(error or f"No case in {root}: choose a dataset on the Data page.")
        return
    names = [v.info.name for v in views]
    previous = st.session_state.get("explore_run")
    if previous and previous not in names:
        st.warning(f"Run {previous} is no longer in the runs folder (deleted or moved): choose another.")
        del st.session_state["explore_run"]
    c1, c2 = st.columns(2)
    # Start from the shipped checkpoint that suits the active data (real-trained on real folders).
    suggested = runs.suggested_checkpoint([v.info for v in views], demo_active=ui.is_demo(root))
    default = names.index(suggested.name) if suggested is not None else 0
    name = c1.selectbox("Run or shipped checkpoint", names, index=default, key="explore_run",
                        format_func=lambda n: ui.run_label(next(v for v in views if v.info.name == n)))
    ids = [c.case_id for c in cases]
    default_case = next((i for i, c in enumerate(cases) if c.labelled), 0)
    case_id = c2.selectbox("Case", ids, index=default_case, key="explore_case",
                           format_func=lambda c: c + ("" if next(x for x in cases if x.case_id == c).labelled else "  (unlabelled)"))
    v = next(v for v in views if v.info.name == name)
    case = next(c for c in cases if c.case_id == case_id)
    ui.training_data_caption(v.info, root, [x.info for x in views])
    if not v.path.exists():
        st.error(f"Run {name} was deleted: choose another.")
        return
    try:
        ckpt_stamp = ui.checkpoint_stamp(v.path)
        ckpt = ui.load_checkpoint(str(v.path), ckpt_stamp)
        modalities = list(ckpt.preprocess.modalities)
        missing = [m for m in modalities if m not in case.modalities]
        if missing:
            st.error(f"{name} was trained on {' + '.join(modalities)}, but case {case_id} has no {', '.join(missing)} "
                     f"(it has {', '.join(sorted(case.modalities))}). Choose another case or a run trained on available modalities.")
            return
        with st.spinner(f"Computing anomaly maps of {case_id} with {name} (once per run and case)…"):
            prep, vs = ui.score_case(str(v.path), ckpt_stamp, str(root), case_id, ui.case_stamp(case))
    except ui.APP_ERRORS as exc:
        st.error(f"Cannot use {name} on {case_id}: {exc}")
        return
    if v.active:
        st.caption(f"{name} is still training: showing its current best checkpoint.")
    inside = vs.maps[vs.mask]
    vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    presets = _presets(v, root)
    hi = max([vmax * 1.5, float(vs.maps.max())] + [t * 1.2 for _, t in presets] + [1e-3])
    key = f"{name}::{case_id}"
    _viewer(prep, vs, presets, max(vmax, 1e-6), float(f"{hi * 1.01:.3g}"), modalities, key)
    _download(v, prep, vs, case_id)


ui.page_header("Explore", "Input, reconstruction, anomaly map and thresholded prediction for one case, slice by slice.")
_page()
