"""Data: choose the dataset folder, pick a case, scrub through all modalities with the seg overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import ui
from uad import paths
from uad.data.demo import demo_ready

DISPLAY_PX = 280  # slices are enlarged to about this width: crisp contours, PNGs still cheap


def _choose_folder() -> None:
    root = ui.active_root()
    with st.form("folder_form", border=False):
        cols = st.columns([5, 1, 1], vertical_alignment="bottom")
        text = cols[0].text_input("Dataset folder (BraTS 2021 or 2023 layout)", value="" if ui.is_demo(root) else str(root),
                                  placeholder=f"demo cohort: {paths.demo_dir()}", key="folder_input")
        use = cols[1].form_submit_button("Use folder", type="primary")
        demo = cols[2].form_submit_button("Use demo")
    if use:
        folder = Path(text.strip()).expanduser() if text.strip() else None
        if folder is not None and not folder.is_absolute():
            folder = (ui.REPO_ROOT / folder).resolve()
        ui.set_active_root(folder)
        st.session_state.pop("data_case", None)
    if demo:
        ui.set_active_root(None)
        st.session_state.pop("data_case", None)


def _skipped_table(skipped, failed: dict[str, str]) -> None:
    rows = [{"case": s.case_id, "reason": s.reason} for s in skipped]
    rows += [{"case": c, "reason": r} for c, r in failed.items()]
    if rows:
        with st.expander(f"{len(rows)} case(s) skipped or unreadable", expanded=not ui.is_demo(ui.active_root())):
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _default_slice(d: dict) -> int:
    if d.get("labels") is not None and d.get("counts"):
        return int(np.argmax(sum(d["counts"].values())))
    return next(iter(d["mods"].values())).shape[0] // 2


@st.fragment
def _viewer(d: dict, case_id: str, style: str) -> None:
    # A fragment: moving a slider reruns only this, not the page.
    with ui.timed("data_viewer"):
        _viewer_body(d, case_id, style)


def _viewer_body(d: dict, case_id: str, style: str) -> None:
    stacks = d["mods"]
    n = next(iter(stacks.values())).shape[0]
    key = f"data_slice::{case_id}"
    k = st.slider("Axial slice", 0, n - 1, _default_slice(d), key=key)
    labels = d.get("labels")
    lab = labels[k] if labels is not None and style != "off" else None
    src = int(d["src_index"][k]) if d.get("src_index") is not None else k
    tumour_here = int((labels[k] > 0).sum()) if labels is not None else None
    info = f"Slice {src} of {n}"
    if tumour_here is not None:
        info += f" · tumour voxels in this slice: {tumour_here}"
    st.markdown(f"**{info}**")
    cols = st.columns(len(stacks))
    for col, (mod, stack) in zip(cols, stacks.items()):
        same_grid = lab is not None and lab.shape == stack[k].shape
        scale = DISPLAY_PX / stack.shape[2]
        rgb = ui.seg_overlay(stack[k], lab if same_grid else None, scale, outline=style == "outline")
        col.image(ui.png(rgb), caption=mod.upper(), width="stretch")
    if labels is not None:
        convention, names = ui.seg_convention(set(d.get("present", [])))
        present = set(d.get("present", []))
        ui.legend([(ui.seg_colour(v, present), f"{v} {names.get(v, 'label')}") for v in sorted(present)])
        st.caption(convention + ". Whole tumour = every label > 0.")
        x = d["src_index"] if d.get("src_index") is not None else np.arange(n)
        bars = {f"{v} {names.get(v, '')}": (d["counts"][v], ui.seg_colour(v, present)) for v in sorted(present)}
        st.plotly_chart(ui.slice_strip(x, bars, src), width="stretch", key="tumour_strip",
                        config={"displayModeBar": False})
    else:
        st.caption("Unlabelled case: no segmentation to overlay.")


def _case_section(root: Path) -> None:
    cases, skipped, error = ui.discover(root)
    failed = st.session_state.setdefault("failed_cases", {}).setdefault(str(root), {})
    if error:
        st.error(error)
        return
    if not cases:
        st.warning(f"No BraTS-style case found in `{root}`. Expected one folder per case, e.g. "
                   "`BraTS2021_00000/BraTS2021_00000_flair.nii.gz` (2021) or "
                   "`BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz` (2023).")
        _skipped_table(skipped, failed)
        return
    labelled = sum(c.labelled for c in cases)
    st.caption(f"`{ui.dataset_label(root)}` · {len(cases)} cases ({labelled} labelled) · {len(skipped)} skipped")
    _skipped_table(skipped, failed)
    ids = [c.case_id for c in cases]
    case_col, style_col = st.columns([2, 1])
    case_id = case_col.selectbox("Case", ids, key="data_case",
                           format_func=lambda c: c + ("" if next(x for x in cases if x.case_id == c).labelled else "  (unlabelled)"))
    case = next(c for c in cases if c.case_id == case_id)
    with st.spinner(f"Loading {case_id}…"):
        d = ui.load_display_case(str(root), case_id, ui.case_stamp(case))
    if d.get("error"):
        st.error(d["error"])
        return
    for mod, msg in d["errors"].items():
        st.error(f"{mod}: {msg}")
        failed[case_id] = msg
    if d.get("seg_error"):
        st.error(f"segmentation: {d['seg_error']}")
        failed[case_id] = d["seg_error"]
    if not d["mods"]:
        st.warning("No modality of this case could be read.")
        return
    style = style_col.segmented_control("Segmentation", ["outline", "filled", "off"], default="outline", key="seg_style",
                                        disabled=d.get("labels") is None) or "off"
    _viewer(d, case_id, style)


ui.page_header("Data", "Browse a dataset: every modality side by side with the tumour sub-regions.")
_choose_folder()
root = ui.active_root()
if ui.is_demo(root) and not demo_ready():
    st.info("The demo cohort is not generated yet: generate it on the Overview page, or choose a folder above.")
else:
    _case_section(root)
