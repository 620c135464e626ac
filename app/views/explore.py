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
from uad.scoring.maps import VolumeScores
from uad.scoring.nifti import nifti_bytes


def _recipe(v: run_jobs.RunView, root):
    """The scoring recipe the page scores ``v`` with, and the evaluation it comes from: the run's evaluation on the
    active folder (whose presets the page shows), else the default recipe (None: no evaluation here)."""
    from uad.scoring.recipe import ScoringRecipe

    try:
        return eval_jobs.viewer_recipe(v, root)
    except ValueError as exc:
        st.warning(md(str(exc)))
        return ScoringRecipe(), None


def _volumes(prep: WorkingCase, scores: list[VolumeScores], names: list[str], modalities: list[str],
             grid: view.WorkingGrid) -> dict[str, viewer.Volume]:
    """The viewer's volumes of a case and its runs' maps, placed on the display grid."""
    volumes: dict[str, viewer.Volume] = {}
    for c, mod in enumerate(modalities):
        volumes[f"input:{mod}"] = viewer.Volume(grid.place(display.unit_codes(prep.images[:, c])), label=f"input {mod.upper()}",
                                                window=(0.0, 1.0), scale=1 / display.UNIT_CODES, unit="normalised 0–1")
    if scores[0].reconstruction is not None:
        for c, mod in enumerate(modalities):
            volumes[f"recon:{mod}"] = viewer.Volume(grid.place(display.unit_codes(scores[0].reconstruction[:, c])),
                                                    label=f"reconstruction {mod.upper()}", window=(0.0, 1.0),
                                                    scale=1 / display.UNIT_CODES, unit="normalised 0–1")
    volumes["brain"] = viewer.Volume(grid.place(scores[0].mask.astype(np.uint8)), kind="mask", label="eroded brain mask")
    if prep.labelled:
        volumes["tumour"] = viewer.Volume(grid.place(prep.tumour.astype(np.uint8)), kind="mask", label="tumour (ground truth)")
    for i, (model_name, model_vs) in enumerate(zip(names, scores)):
        volumes[f"map{i}"] = viewer.Volume(grid.place(model_vs.maps.astype(np.float32)), kind="heat", label=f"anomaly map · {model_name}")
    return volumes


def _viewer(prep: WorkingCase, models: list[tuple[str, VolumeScores]], presets: list[tuple[float, float]], vmax: float,
            modalities: list[str], root: str, case_dir: str, fresh: bool) -> None:
    """Hand one case to the viewer. Everything after this happens in the browser: slices, window/level, layout,
    and the pixel threshold with its TP/FP/FN map and Dice (the browser thresholds the float32 maps exactly as
    ``VolumeScores.prediction`` does; tests/test_browser.py compares them)."""
    name, vs = models[0]
    grid = view.working_grid(prep)
    top = view.threshold_range(vs, presets)
    # Built once for the same case and maps objects of the app's caches: a rerun or a revisit neither rebuilds
    # nor rehashes 20 MB.
    scores, names = [m for _, m in models], [n for n, _ in models]
    volumes = viewer.kept((prep, *scores), (tuple(names), tuple(modalities)), lambda: _volumes(prep, scores, names, modalities, grid))
    inputs = [f"input:{mod}" for mod in modalities]
    recons = [f"recon:{mod}" for mod in modalities] if vs.reconstruction is not None else []
    contour = [{"volume": "tumour", "kind": "contour", "width": 1.5}] if prep.labelled else []
    colour = {m: ui.MODEL_COLOURS[i % len(ui.MODEL_COLOURS)] for i, (m, _) in enumerate(models)}
    panels = [viewer.Panel("Input ({channel})" + (" + tumour outline" if prep.labelled else ""), inputs, contour)]
    if recons:
        panels.append(viewer.Panel("Reconstruction ({channel})", recons, subtitle=name))
    for i, (model_name, model_vs) in enumerate(models):
        panels.append(viewer.Panel("Anomaly map", inputs, [{"volume": f"map{i}", "kind": "heat"}, *contour],
                                   subtitle=model_name, colour=colour[model_name]))
    panels.append(viewer.Panel("Thresholded" + (" vs ground truth" if prep.labelled else ""), inputs,
                               [{"kind": "classes", "alpha": 0.65}], subtitle=name, colour=colour[name]))
    if prep.labelled:
        legend = [(ui.GT_CONTOUR, "tumour outline"), (ui.PRED_COLOURS["TP"], "detected tumour (TP)"),
                  (ui.PRED_COLOURS["FP"], "false alarm (FP)"), (ui.PRED_COLOURS["FN"], "missed tumour (FN)")]
    else:
        legend = [(ui.PRED_COLOURS["FP"], "flagged as anomalous")]
    # Per-slice numbers at the threshold are computed in the browser ("source"); slice scores come from uad.
    stats = []
    if prep.labelled:
        stats += [{"label": f"Dice · this slice ({name})", "source": "dice", "digits": 3},
                  {"label": "Tumour pixels · this slice", "source": "tumour", "digits": 0}]
    stats.append({"label": "Flagged pixels · this slice", "source": "flagged", "digits": 0})
    lines = []
    for model_name, model_vs in models:
        stats.append({"label": f"Slice score · {model_name}", "values": grid.per_slice(model_vs.scores), "digits": 4})
        lines.append({"name": model_name, "colour": colour[model_name], "values": grid.per_slice(model_vs.scores)})
    bars = [{"name": "tumour", "colour": ui.GT_CONTOUR, "values": grid.per_slice(prep.tumour_pixels)}] if prep.labelled else []
    strip = {"bars": bars, "lines": lines, "bar_title": "tumour voxels (ground truth)", "line_title": "slice score",
             "empty_bars": "no tumour in this case"}
    threshold = {
        "map": "map0", "mask": "brain", "truth": "tumour" if prep.labelled else None, "name": name,
        "min_component": int(vs.recipe.post.min_component) if vs.recipe is not None else 0,
        "kept_z": [int(z) for z in grid.z_of], "min": 0.0, "max": top, "step": top / 1000,
        "value": view.default_threshold(vs, presets, top),
        "presets": [{"rate": float(r), "value": float(min(t, top)), "label": f"{r:.0%}"} for r, t in presets],
    }
    notes = [f"Working-size slices ({prep.geometry.image_size} px, {grid.spacing[2]:.2f} mm pixels), as the models see "
             f"them; positions under the cursor are mapped back to the source file and the scanner. One colour scale "
             f"for every model: 0 to {vmax:.3g}."]
    viewer.show(key=f"explore_viewer::{root}", fresh=fresh, case_id=prep.case_id, source=case_dir, volumes=volumes, panels=panels,
                spacing=grid.spacing, slice_labels=grid.slice_labels, start=view.start(prep, vs, grid),
                colours={"classes": {1: ui.PRED_COLOURS["TP"], 2: ui.PRED_COLOURS["FP"], 3: ui.PRED_COLOURS["FN"]},
                         "contour": ui.GT_CONTOUR, "labels": {}},
                heat={"vmax": vmax, "lut": ui.INFERNO.tolist(), "floor": 0.2, "max_alpha": 0.85,
                      "label": "anomaly score (every model)"},
                threshold=threshold, legend=legend, stats=stats, strip=strip, notes=notes,
                position={"to_voxel": grid.to_voxel, "affine": grid.affine, "exact": False},
                channels=[m.upper() for m in modalities], memory=f"explore|{root}|{name}",
                version=(root, prep.case_id, tuple(m for m, _ in models)), max_cell_height=300)


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
    state.keep_choice("explore_run")
    previous = st.session_state.get("explore_run")
    if previous and previous not in names:
        st.warning(f"Run {md(previous)} is no longer in the runs folder (deleted or moved): choose another.")
        del st.session_state["explore_run"]
    # Start from the run that suits the active data: the shipped checkpoint for it, else the best completed
    # run; never a cancelled or failed one while a finished one exists. The choices are kept when the page is
    # left (state.keep_choice); none is given to a widget as its own default (that would collide with them).
    suggested, why = run_choice.default_run([v.info for v in views], demo_active=state.is_demo(root), data_root=root)
    default = names.index(suggested.name) if suggested is not None else 0
    state.keep_choice("explore_run", names[default])
    # The run's label (name, model, state, tags) needs the width: the run box has a row of its own.
    name = st.selectbox("Run or shipped checkpoint", names, key="explore_run",
                        format_func=lambda n: ui.run_label(next(v for v in views if v.info.name == n)),
                        help=f"Opens first with {md(names[default])}: {md(why)}.")
    state.remember_choice("explore_run")
    ids = [c.case_id for c in cases]
    # Keyed by folder, like the Data page's: a case box never shows a case of another folder.
    case_key = state.case_key("explore", root)
    state.keep_choice(case_key, ids[run_choice.default_case(cases)], options=ids)
    c_case, c_others = st.columns([1, 3])
    case_id = c_case.selectbox("Case", ids, key=case_key,
                           format_func=lambda c: c + ("" if next(x for x in cases if x.case_id == c).labelled else "  (unlabelled)"))
    state.remember_choice(case_key)
    choices = [n for n in names if n != name]
    state.keep_choice("explore_others", options=choices)  # a run now chosen above, or deleted, leaves the list
    others = c_others.multiselect("Heatmaps beside it", choices, key="explore_others", max_selections=3,
                            format_func=lambda n: ui.run_label(next(v for v in views if v.info.name == n)),
                            help="Other runs' anomaly maps of the same case, side by side on the same slices and colour scale.")
    state.remember_choice("explore_others")
    v = next(v for v in views if v.info.name == name)
    case = next(c for c in cases if c.case_id == case_id)
    ui.training_data_caption(v.info, root, [x.info for x in views])
    if v.state in ("cancelled", "failed") or v.active:
        st.warning(f"{md(name)} is {v.state}: its checkpoint may be only partly trained (epoch {v.epoch} of {v.epochs or '?'}).")
    shown = (str(root), name, case_id)
    place, fresh = ui.viewer_place("explore_shown", shown, f"Computing the anomaly maps of {case_id} with {name}…")
    recipe, summary = _recipe(v, root)
    scored = _score(v, case, root, recipe)
    if scored is None:
        place()  # nothing in the viewer's place
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
    vmax = view.colour_max([m for _, m in models])  # one colour scale for every model on this case
    presets = summary.presets() if summary is not None else []
    with place():
        evals.presets_notice(v, root, summary)
        st.caption(f"Scored with {'the recipe of this evaluation' if summary is not None else 'the default recipe'}: "
                   f"{vs.recipe.describe()}.")
        stale = summary.staleness(state.weights_sha256(v.path)) if summary is not None else None
        if stale:
            st.warning(md(f"The evaluation these presets come from may not describe {name}'s current weights: {stale}."))
        if not prep.labelled:
            st.caption("Unlabelled case: no ground truth, so no Dice.")
        with ui.timed("explore_viewer"):
            _viewer(prep, models, presets, vmax, modalities, str(root), str(case.modalities[modalities[0]].parent), fresh)
        _download(v, prep, vs, case_id)
    st.session_state["explore_shown"] = shown


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
