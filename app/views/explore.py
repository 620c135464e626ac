"""Explore: where a model sees anomalies in one case, against the tumour mask, slice by slice."""

from __future__ import annotations

import json
import re

import evals
import numpy as np
import state
import streamlit as st
import ui
import viewer
from safe import md

from uad.data import display
from uad.data.demo import demo_ready
from uad.data.preprocess import WorkingCase
from uad.jobs import choice as run_choice
from uad.jobs import eval_jobs, run_jobs
from uad.scoring import view
from uad.scoring.nifti import nifti_bytes


def _recipe(v: run_jobs.RunView, root):
    """The scoring recipe the page scores ``v`` with, and the evaluation it comes from: the run's evaluation on the
    active folder (whose presets the page shows), else the default recipe (None: no evaluation here)."""
    from uad.scoring.recipe import ScoringRecipe

    summary = eval_jobs.evaluation_on(v, root)
    try:
        return (summary.recipe, summary) if summary is not None else (ScoringRecipe(), None)
    except ValueError as exc:
        st.warning(str(exc))
        return ScoringRecipe(), None


def _set(key: str, value) -> None:
    st.session_state[key] = value


@st.fragment
def _viewer(prep: WorkingCase, models: list[tuple[str, object]], presets: list[tuple[float, float]], vmax: float,
            own_vmax: float, hi: float, modalities: list[str], key: str, root: str) -> None:
    # A fragment: moving the threshold reruns only this. Moving through the slices reruns nothing at all:
    # the viewer component draws them in the browser.
    with ui.timed("explore_viewer"):
        _viewer_body(prep, models, presets, vmax, own_vmax, hi, modalities, key, root)


def _viewer_body(prep: WorkingCase, models: list[tuple[str, object]], presets: list[tuple[float, float]], vmax: float,
                 own_vmax: float, hi: float, modalities: list[str], key: str, root: str) -> None:
    name, vs = models[0]
    thr_key = f"thr::{key}"
    if thr_key not in st.session_state:
        near5 = [t for r, t in presets if abs(r - 0.05) < 1e-9]
        st.session_state[thr_key] = float(np.clip(near5[0] if near5 else own_vmax * 0.5, 0.0, hi))
    st.session_state[thr_key] = min(float(st.session_state[thr_key]), hi)  # the range follows a retrained checkpoint

    c_thr, c_chan = st.columns([3, 1])
    thr = c_thr.slider(f"Pixel threshold on {md(name)}'s anomaly map", 0.0, hi, step=hi / 1000, format="%.4f", key=thr_key,
                       help="Pixels whose anomaly score is at least this are flagged; marked on the colour bar.")
    if presets:
        cols = c_thr.columns(len(presets) + 1)
        cols[0].caption("Presets (healthy FPR):")
        for col, (rate, t) in zip(cols[1:], presets):
            col.button(f"{rate:.0%} · {t:.3f}", key=f"preset::{key}::{rate}", on_click=_set, args=(thr_key, min(t, hi)),
                       help=f"Threshold at which {rate:.0%} of healthy validation pixels are flagged", width="stretch")
    channel = 0
    if len(modalities) > 1:
        channel = modalities.index(c_chan.radio("Channel shown", modalities, horizontal=True, key=f"chan::{key}"))

    pred = vs.prediction(thr)
    truth = (prep.tumour & vs.mask) if prep.labelled else None
    m1, m2, m3, m4 = st.columns(4)
    if truth is not None:
        counts = view.volume_counts(vs, prep, thr)
        m1.metric("Dice · whole volume", ui.fmt(counts.dice))
        m2.metric("Flagged pixels · volume", int(pred.sum()))
        m3.metric("Tumour pixels · volume", int(truth.sum()))
    else:
        m1.metric("Flagged pixels · volume", int(pred.sum()))
        st.caption("Unlabelled case: no ground truth, so no Dice.")
    _draw(prep, models, pred, truth, thr, vmax, channel, modalities, key, root)


def _grid(prep: WorkingCase) -> tuple[np.ndarray, int, list]:
    """Viewer Z of each kept slice (gaps between kept slices stay empty), the number of Z, their source indices."""
    kept = np.asarray(prep.geometry.kept)
    z_of = kept - kept[0]
    n = int(z_of[-1]) + 1
    labels: list = [None] * n
    for z, src in zip(z_of, prep.slice_index):
        labels[int(z)] = int(src)
    return z_of, n, labels


def _on_grid(stack: np.ndarray, z_of: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, *stack.shape[1:]), stack.dtype)
    out[z_of] = stack
    return out


def _draw(prep: WorkingCase, models: list[tuple[str, object]], pred: np.ndarray, truth: np.ndarray | None, thr: float,
          vmax: float, channel: int, modalities: list[str], key: str, root: str) -> None:
    z_of, n, slice_labels = _grid(prep)
    name, vs = models[0]
    chan = modalities[channel].upper()
    volumes = {"input": _on_grid(display.unit_to_uint8(prep.images[:, channel]), z_of, n)}
    kinds = {"input": "grey"}
    contour = []
    if prep.labelled:
        volumes["tumour"], kinds["tumour"] = _on_grid(prep.tumour.astype(np.uint8), z_of, n), "mask"
        contour = [{"volume": "tumour", "kind": "contour", "width": 1.5}]
    panels = [viewer.Panel(f"Input ({chan})" + (" + tumour outline" if prep.labelled else ""), "input", contour)]
    if vs.reconstruction is not None:
        volumes["recon"] = _on_grid(display.unit_to_uint8(vs.reconstruction[:, channel]), z_of, n)
        panels.append(viewer.Panel(f"Reconstruction · {name}", "recon"))
    for i, (model_name, model_vs) in enumerate(models):
        volumes[f"heat{i}"], kinds[f"heat{i}"] = _on_grid(display.quantise(model_vs.maps, vmax), z_of, n), "heat"
        panels.append(viewer.Panel(f"Anomaly map · {model_name}", "input", [{"volume": f"heat{i}", "kind": "heat"}, *contour]))
    classes = np.zeros(pred.shape, np.uint8)
    if truth is not None:
        classes[pred & truth], classes[pred & ~truth], classes[~pred & truth] = 1, 2, 3
        legend = [(ui.GT_CONTOUR, "tumour outline"), (ui.PRED_COLOURS["TP"], "detected tumour (TP)"),
                  (ui.PRED_COLOURS["FP"], "false alarm (FP)"), (ui.PRED_COLOURS["FN"], "missed tumour (FN)")]
    else:
        classes[pred] = 2
        legend = [(ui.PRED_COLOURS["FP"], "flagged as anomalous")]
    volumes["classes"], kinds["classes"] = _on_grid(classes, z_of, n), "classes"
    panels.append(viewer.Panel(f"{name} ≥ {thr:.4f}" + (" vs ground truth" if truth is not None else ""), "input",
                               [{"volume": "classes", "kind": "classes", "alpha": 0.65}]))

    # Per-slice numbers, computed here by uad for every slice; the viewer shows those of its axial slice.
    stats = []
    numbers = view.slice_numbers(vs, prep, thr)
    if truth is not None:
        stats.append({"label": f"Dice · this slice ({name})", "values": viewer.per_slice(numbers["dice"], z_of, n), "digits": 3})
        stats.append({"label": "Tumour pixels · this slice", "values": viewer.per_slice(numbers["tumour"], z_of, n), "digits": 0})
    stats.append({"label": "Flagged pixels · this slice", "values": viewer.per_slice(numbers["flagged"], z_of, n), "digits": 0})
    lines = []
    for i, (model_name, model_vs) in enumerate(models):
        stats.append({"label": f"Slice score · {model_name}", "values": viewer.per_slice(model_vs.scores, z_of, n), "digits": 4})
        lines.append({"name": model_name, "colour": ui.MODEL_COLOURS[i % len(ui.MODEL_COLOURS)],
                      "values": viewer.per_slice(model_vs.scores, z_of, n)})
    bars = []
    if prep.labelled:
        bars.append({"name": "tumour", "colour": list(ui.GT_CONTOUR), "values": viewer.per_slice(prep.tumour_pixels, z_of, n)})
    strip = {"bars": bars, "lines": lines, "bar_title": "tumour voxels (ground truth)",
             "empty_bars": "no tumour in this case"}

    if prep.labelled and prep.tumour_pixels.any():
        k = int(np.argmax(prep.tumour_pixels))
    else:
        k = int(np.argmax(vs.scores))
    ys, xs = np.nonzero(prep.tumour[k]) if prep.labelled and prep.tumour[k].any() else np.nonzero(vs.mask[k])
    start = [int(z_of[k]), int(np.median(ys)) if ys.size else prep.images.shape[-2] // 2,
             int(np.median(xs)) if xs.size else prep.images.shape[-1] // 2]
    geo = prep.geometry
    row_mm, col_mm = geo.working_pixel_mm
    notes = [f"Working-size slices ({geo.image_size} px, {col_mm:.2f} mm pixels), as the models see them. "
             f"One colour scale for every model: 0 to {vmax:.3g}."]
    viewer.show(case_id=prep.case_id, source=root, volumes=volumes, kinds=kinds, panels=panels,
                spacing=(geo.spacing[2], row_mm, col_mm), slice_labels=slice_labels, start=start, key=f"explore_viewer::{key}",
                colours={"classes": {1: ui.PRED_COLOURS["TP"], 2: ui.PRED_COLOURS["FP"], 3: ui.PRED_COLOURS["FN"]},
                         "contour": ui.GT_CONTOUR, "labels": {}},
                heat={"vmax": vmax, "threshold": thr, "lut": ui.INFERNO.tolist(), "floor": 0.2, "max_alpha": 0.85,
                      "label": "anomaly score (every model)"},
                legend=legend, stats=stats, strip=strip, notes=notes, version=(key, thr, channel, tuple(m for m, _ in models)),
                max_cell_height=300)


def _download(v: run_jobs.RunView, prep: WorkingCase, vs, case_id: str) -> None:
    # Built only when clicked: the inverse resampling to the source grid takes a fraction of a second.
    st.download_button("Download this volume's anomaly map (NIfTI, source grid)", data=lambda: nifti_bytes(vs.maps, prep.geometry),
                       file_name=re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{case_id}_{v.info.model}_anomaly") + ".nii.gz", mime="application/gzip", key="explore_download",
                       icon=":material/download:")


def _page() -> None:
    # -- evaluation hand-off (owned by the evaluation/report work: keep these lines first in the page body) ----
    # Compare's per-case table opens a case here: it sets st.session_state["explore_request"] = {"run": <run name
    # as listed here>, "case": <case id>, "root": <dataset folder>} and calls st.switch_page("views/explore.py").
    # take_explore_request() pops it before anything is drawn: that folder becomes the active dataset and the
    # selectors keyed "explore_run" / state.case_key("explore", root) start on that run and case (they must honour session state).
    evals.take_explore_request()
    # ------------------------------------------------------------------------------------------------------------
    views = [v for v in state.list_run_views(warn=True) if v.has_checkpoint]
    if not views:
        st.info("No run with a checkpoint yet: train one on the **Train** page (or ship checkpoints in `checkpoints/`).")
        return
    root = state.active_root()
    if state.is_demo(root) and not demo_ready():
        st.info("The demo cohort is not generated yet: generate it on the Overview page, or choose a folder on the Data page.")
        return
    cases, _, error = state.discover(root)
    if error or not cases:
        st.error(md(error or f"No case in {root}: choose a dataset on the Data page."))
        return
    names = [v.info.name for v in views]
    previous = st.session_state.get("explore_run")
    if previous and previous not in names:
        st.warning(f"Run {md(previous)} is no longer in the runs folder (deleted or moved): choose another.")
        del st.session_state["explore_run"]
    c1, c2, c3 = st.columns([2, 2, 2])
    # Start from the run that suits the active data: the shipped checkpoint for it, else the best completed
    # run; never a cancelled or failed one while a finished one exists.
    suggested, why = run_choice.default_run([v.info for v in views], demo_active=state.is_demo(root), data_root=root)
    default = names.index(suggested.name) if suggested is not None else 0
    name = c1.selectbox("Run or shipped checkpoint", names, index=default, key="explore_run",
                        format_func=lambda n: ui.run_label(next(v for v in views if v.info.name == n)),
                        help=f"Opens first with {md(names[default])}: {md(why)}.")
    ids = [c.case_id for c in cases]
    default_case = next((i for i, c in enumerate(cases) if c.labelled), 0)
    # Keyed by folder, like the Data page's: a case box never shows a case of another folder.
    case_id = c2.selectbox("Case", ids, index=default_case, key=state.case_key("explore", root),
                           format_func=lambda c: c + ("" if next(x for x in cases if x.case_id == c).labelled else "  (unlabelled)"))
    choices = [n for n in names if n != name]
    if "explore_others" in st.session_state:  # a run now chosen above, or deleted, leaves the list
        st.session_state["explore_others"] = [n for n in st.session_state["explore_others"] if n in choices]
    others = c3.multiselect("Heatmaps beside it", choices, key="explore_others", max_selections=3,
                            format_func=lambda n: ui.run_label(next(v for v in views if v.info.name == n)),
                            help="Other runs' anomaly maps of the same case, side by side on the same slices and colour scale.")
    v = next(v for v in views if v.info.name == name)
    case = next(c for c in cases if c.case_id == case_id)
    ui.training_data_caption(v.info, root, [x.info for x in views])
    if v.state in ("cancelled", "failed") or v.active:
        st.warning(f"{md(name)} is {v.state}: its checkpoint may be only partly trained (epoch {v.epoch} of {v.epochs or '?'}).")
    recipe, summary = _recipe(v, root)
    scored = _score(v, case, root, recipe)
    if scored is None:
        return
    prep, vs, modalities = scored
    models = [(name, vs)]
    for other in others:
        ov = next((x for x in views if x.info.name == other), None)
        got = _score(ov, case, root, _recipe(ov, root)[0]) if ov is not None else None
        if got is None:
            continue
        aligned = view.aligned(prep, got[0], got[1])
        if aligned is None:
            st.warning(f"{md(other)} crops the slices differently from {md(name)} (other preprocessing): not shown side by side.")
            continue
        models.append((other, aligned))
    own_vmax = view.colour_max([vs])
    vmax = view.colour_max([m for _, m in models])  # one colour scale for every model on this case
    presets = summary.presets() if summary is not None else []
    evals.presets_notice(v, root, summary)
    st.caption(f"Scored with {'the recipe of this evaluation' if summary is not None else 'the default recipe'}: "
               f"{vs.recipe.describe()}.")
    stale = summary.staleness(state.weights_sha256(v.path)) if summary is not None else None
    if stale:
        st.warning(f"The evaluation these presets come from may not describe {name}'s current weights: {stale}.")
    hi = max([own_vmax * 1.5, float(vs.maps.max())] + [t * 1.2 for _, t in presets] + [1e-3])
    key = f"{name}::{case_id}"
    _viewer(prep, models, presets, vmax, own_vmax, float(f"{hi * 1.01:.3g}"), modalities, key, str(case.modalities[modalities[0]].parent))
    _download(v, prep, vs, case_id)


def _score(v: run_jobs.RunView, case, root, recipe):
    """(prep, scores, modalities) of a run on a case, or None after writing why not."""
    name = v.info.name
    if not v.path.exists():
        st.error(f"Run {md(name)} was deleted: choose another.")
        return None
    try:
        ckpt_stamp = state.checkpoint_stamp(v.path)
        ckpt = state.load_checkpoint(str(v.path), ckpt_stamp)
        modalities = list(ckpt.preprocess.modalities)
        missing = [m for m in modalities if m not in case.modalities]
        if missing:
            st.error(md(f"{name} was trained on {' + '.join(modalities)}, but case {case.case_id} has no {', '.join(missing)} "
                        f"(it has {', '.join(sorted(case.modalities))}). Choose another case or a run trained on available modalities."))
            return None
        with st.spinner(f"Computing anomaly maps of {md(case.case_id)} with {md(name)} (once per run and case)…"):
            prep, vs = state.score_case(str(v.path), ckpt_stamp, str(root), case.case_id, state.case_stamp(case),
                                        json.dumps(recipe.to_dict(), sort_keys=True))
    except state.APP_ERRORS as exc:
        st.error(md(f"Cannot use {name} on {case.case_id}: {exc}"))
        return None
    if v.active:
        st.caption(f"{md(name)} is still training: showing its current best checkpoint.")
    return prep, vs, modalities


ui.page_header("Explore", "Input, reconstruction, anomaly maps and thresholded prediction for one case, in three planes.")
_page()
