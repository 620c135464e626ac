"""Data: choose the dataset folder, pick a case, see every modality in three planes with the seg overlaid."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import state
import streamlit as st
import ui
import viewer
from safe import code, md

from uad.core import paths
from uad.data import display
from uad.data.demo import demo_ready


def _choose_folder() -> None:
    root = state.active_root()
    with st.form("folder_form", border=False):
        cols = st.columns([5, 1, 1], vertical_alignment="bottom")
        text = cols[0].text_input("Dataset folder (BraTS 2021 or 2023 layout)", value="" if state.is_demo(root) else str(root),
                                  placeholder=f"demo cohort: {paths.demo_dir()}", key="folder_input")
        use = cols[1].form_submit_button("Use folder", type="primary")
        demo = cols[2].form_submit_button("Use demo")
    if use:
        folder = Path(text.strip()).expanduser() if text.strip() else None
        if folder is not None and not folder.is_absolute():
            folder = (state.REPO_ROOT / folder).resolve()
        state.set_active_root(folder)
    if demo:
        state.set_active_root(None)


def _skipped_table(skipped, failed: dict[str, str]) -> None:
    rows = [{"case": s.case_id, "reason": s.reason} for s in skipped]
    rows += [{"case": c, "reason": r} for c, r in failed.items()]
    if rows:
        with st.expander(f"{len(rows)} case(s) skipped or unreadable", expanded=not state.is_demo(state.active_root())):
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _viewer(d, root: Path, fresh: bool) -> None:
    with ui.timed("data_viewer"):
        volumes = {mod: viewer.Volume(values, label=f"{mod.upper()} ({d.files.get(mod, mod)})", window=d.windows[mod],
                                      unit="the file's values") for mod, values in d.mods.items()}
        overlays = []
        legend, stats, bars, notes = [], [], [], []
        colours: dict = {"labels": {}, "contour": ui.GT_CONTOUR}
        names: dict[int, str] = {}
        if d.labels is not None:
            present = d.present
            description, names = ui.seg_convention(set(present))
            volumes["labels"] = viewer.Volume(d.labels, kind="labels", label=f"label ({d.files.get('seg', 'segmentation')})")
            overlays = [{"volume": "labels", "kind": "labels"}]
            colours["labels"] = {v: ui.seg_colour(v, present) for v in present}
            legend = [(ui.seg_colour(v, present), f"{v} {names.get(v, 'label')}") for v in present]
            counts = d.counts  # per slice, computed by uad
            stats.append({"label": "Tumour voxels · this slice", "values": counts["whole"], "digits": 0})
            for v in present:
                stats.append({"label": f"{v} {names.get(v, 'label')}", "values": counts[str(v)], "digits": 0})
                bars.append({"name": names.get(v, str(v)), "colour": ui.seg_colour(v, present), "values": counts[str(v)]})
            notes.append(description + ". Whole tumour = every label > 0.")
        elif d.seg_error:
            notes.append(f"Segmentation unreadable, not drawn: {d.seg_error}")
        else:
            notes.append("Unlabelled case: this case has no segmentation file.")
        notes.append(f"Files: {d.source} · default window: {display.DISPLAY_PERCENTILES[0]}–{display.DISPLAY_PERCENTILES[1]} "
                     "percentiles of the brain's voxels (uad's brain mask), per sequence, cropped to that mask. "
                     "Values under the cursor are the files' own.")
        panels = [viewer.Panel(mod.upper(), mod, overlays, subtitle=d.files.get(mod, "")) for mod in d.mods]
        strip = {"bars": bars, "lines": [], "bar_title": "tumour voxels",
                 "empty_bars": "no tumour labelled in this case"} if d.labels is not None else None
        viewer.show(key=f"data_viewer::{root}", fresh=fresh, case_id=d.case_id, source=d.source, volumes=volumes,
                    panels=panels, spacing=d.spacing, slice_labels=d.slice_labels, start=d.start, colours=colours,
                    legend=legend, stats=stats, strip=strip, notes=notes, label_names=names,
                    position={"to_voxel": d.to_voxel, "affine": d.affine, "exact": True}, memory="data",
                    version=(str(root), d.case_id, id(d)), max_cell_height=320)


def _case_section(root: Path) -> None:
    cases, skipped, error = state.discover(root)
    failed = st.session_state.setdefault("failed_cases", {}).setdefault(str(root), {})
    if error:
        st.error(md(error))
        return
    if not cases:
        st.warning(f"No BraTS-style case found in {code(root)}. Expected one folder per case, e.g. "
                   "`BraTS2021_00000/BraTS2021_00000_flair.nii.gz` (2021) or "
                   "`BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz` (2023).")
        _skipped_table(skipped, failed)
        return
    labelled = sum(c.labelled for c in cases)
    st.caption(f"{code(state.dataset_label(root))} · {len(cases)} cases ({labelled} labelled) · {len(skipped)} skipped")
    _skipped_table(skipped, failed)
    ids = [c.case_id for c in cases]
    # The widget belongs to this folder: another folder gets another widget, so the box can never keep a
    # case id of the previous folder while the viewer draws a case of the new one. Its choice is kept when
    # another folder is opened, and comes back with the folder.
    key = case_key(root)
    state.keep_choice(key, ids[0], options=ids)
    case_id = st.selectbox("Case", ids, key=key,
                           format_func=lambda c: c + ("" if next(x for x in cases if x.case_id == c).labelled else "  (unlabelled)"))
    state.remember_choice(key)
    case = next(c for c in cases if c.case_id == case_id)
    shown = (str(root), case_id)
    place, fresh = ui.viewer_place("data_shown", shown, f"Loading {case_id} ({', '.join(m.upper() for m in case.modalities)})…")
    d = state.load_display_case(str(root), case_id, state.case_stamp(case))
    if d is None:
        place().error(md(f"case {case_id} is no longer in {root}"))
        return
    with place():
        for mod, msg in d.errors.items():
            st.error(md(f"{mod}: {msg}"))
            failed[case_id] = msg
        if d.seg_error:
            st.error(md(f"Segmentation unreadable: {d.seg_error}"))
            failed[case_id] = d.seg_error
        if not d.mods:
            st.warning("No modality of this case could be read.")
            return
        _viewer(d, root, fresh)
    st.session_state["data_shown"] = shown


def case_key(root: Path) -> str:
    return f"data_case::{Path(root).resolve()}"


ui.page_header("Data", "Browse a dataset: every modality side by side with the tumour sub-regions.")
_choose_folder()
root = state.active_root()
if state.is_demo(root) and not demo_ready():
    st.info("The demo cohort is not generated yet: generate it on the Overview page, or choose a folder above.")
else:
    _case_section(root)
