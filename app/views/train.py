"""Train: launch ``python -m uad train`` as a separate process and watch every run from its folder on disk.

Everything about a run (its state, progress, ETA, end, name and tags) comes from ``uad.jobs``; its history
(losses, learning rate, throughput, samples per epoch, each epoch once) from ``uad.runs.history``; the runs
table from ``uad.jobs.monitor``; the charts from ``uad.evaluation.figures``. The settings are checked by
``uad`` before anything starts. This page only draws.
"""

from __future__ import annotations

import pandas as pd
import state
import streamlit as st
import ui
from safe import code, md

from uad.core.errors import UADError
from uad.data.cases import MODALITIES
from uad.data.demo import demo_ready
from uad.evaluation import figures
from uad.jobs import monitor, run_jobs
from uad.models import list_models, model_description, model_options
from uad.runs import history
from uad.runs import meta as run_meta

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
SIZES = list(range(64, 257, 16))
# Material icons: emoji fonts are often missing on Linux desktops and headless browsers.
STATE_ICON = {"queued": ":grey[:material/schedule:]", "running": ":blue[:material/autorenew:]",
              "completed": ":green[:material/check_circle:]", "time budget": ":green[:material/timer:]",
              "failed": ":red[:material/error:]", "cancelled": ":orange[:material/cancel:]"}
SHOWN = 8  # runs listed before "show all"
KEPT = "train_form_kept"  # the form's values, in a key no widget owns: Streamlit drops widget state off-page
DEFAULTS = {"train_mods": ["flair"], "train_size": 128, "train_epochs": 20, "train_batch": 32, "train_lr": 1e-4,
            "train_minutes": 0.0, "train_seed": 0, "train_name": "", "train_tags": "", "train_note": ""}
# The charts' and the runs table's settings, kept across pages like the form's.
VIEW_DEFAULTS = {"train_smoothing": 0.6, "train_log_y": False, "train_filter": "", "train_filter_models": [],
                 "train_filter_states": []}


# -- the form, kept across pages --------------------------------------------------------------------------
def _kept(key: str, default):
    """Give the widget ``key`` its value from before (or ``default``) when Streamlit has dropped it."""
    kept = st.session_state.setdefault(KEPT, {})
    if key not in st.session_state:
        st.session_state[key] = kept.get(key, default)
    return key


def _keep(key: str):
    st.session_state[KEPT][key] = st.session_state[key]
    return st.session_state[key]


def _option_widget(col, model: str, name: str, opt):
    label = name.replace("_", " ")
    key = _kept(f"opt::{model}::{name}", opt.default)
    if opt.choices:
        col.selectbox(label, list(opt.choices), key=key)
    elif opt.type is bool:
        col.checkbox(label, key=key)
    elif opt.type is int:  # bounds as the model declares them (uad.models.model_options)
        col.number_input(label, min_value=opt.low, max_value=opt.high, step=1, key=key,
                         help=f"{opt.low} to {opt.high}" if opt.low is not None else None)
    elif opt.type is float:
        col.number_input(label, min_value=opt.low, max_value=opt.high, format="%g", key=key,
                         help=f"{opt.low:g} to {opt.high:g}" if opt.low is not None else None)
    else:
        col.text_input(label, key=key)
    return _keep(key)


def _check_dataset(modalities: list[str]) -> str | None:
    root = state.active_root()
    if state.is_demo(root) and not demo_ready():
        return None  # the trainer generates the demo cohort itself
    cases, _, error = state.discover(root)
    if error:
        return error
    usable = [c for c in cases if all(m in c.modalities for m in modalities)]
    if not usable:
        return f"no case in {root} has all of {', '.join(modalities)}"
    if not any(c.labelled for c in usable):
        return f"no labelled case in {root} has all of {', '.join(modalities)}: the patient split needs labelled cases"
    return None


def _form() -> None:
    models = list_models()
    model_key = _kept("train_model", models[0])
    if st.session_state[model_key] not in models:
        st.session_state[model_key] = models[0]
    # Full width: a model's description in two thirds of a 1280-px window was cut off.
    model = st.selectbox("Model", models, key=model_key, format_func=lambda m: f"{m} — {model_description(m)}")
    _keep(model_key)
    with st.container(border=True):
        c1, c2, c3, c4 = st.columns(4)
        c1.multiselect("Modalities (input channels)", list(MODALITIES), key=_kept("train_mods", DEFAULTS["train_mods"]))
        c2.select_slider("Image size (px)", options=SIZES, key=_kept("train_size", DEFAULTS["train_size"]))
        c3.number_input("Epochs", 1, 10_000, key=_kept("train_epochs", DEFAULTS["train_epochs"]))
        c4.number_input("Batch size", 1, 4096, key=_kept("train_batch", DEFAULTS["train_batch"]))
        c1, c2, c3, _ = st.columns(4)
        c1.select_slider("Learning rate", options=LEARNING_RATES, format_func=lambda v: f"{v:g}",
                         key=_kept("train_lr", DEFAULTS["train_lr"]))
        c2.number_input("Time budget (minutes, 0 = none)", 0.0, 10_000.0, step=5.0, key=_kept("train_minutes", DEFAULTS["train_minutes"]))
        c3.number_input("Seed", 0, 2**31 - 1, key=_kept("train_seed", DEFAULTS["train_seed"]))
        # A path in a narrow column wrapped mid-word: a full-width code line scrolls instead, and copies whole.
        st.caption("Dataset (the active one, chosen on the Data page)")
        st.code(state.dataset_label(state.active_root()), language=None, wrap_lines=False)
        c1, c2, c3 = st.columns([1, 1, 2])
        c1.text_input("Run name (optional)", key=_kept("train_name", ""), max_chars=run_meta.MAX_NAME)
        c2.text_input("Tags (optional, space-separated)", key=_kept("train_tags", ""))
        c3.text_input("Note (optional)", key=_kept("train_note", ""))
        values = {}
        with st.expander(f"{model} options", expanded=model == "vit"):
            cols = st.columns(4)
            for i, (name, opt) in enumerate(model_options(model).items()):
                values[name] = (_option_widget(cols[i % 4], model, name, opt), opt.default)
        for key in DEFAULTS:
            _keep(key)
        start = st.button("Start training", type="primary", key="train_start")
    if start:
        _start(model, values)


def _start(model: str, values: dict) -> None:
    from uad.training.config import TrainConfig

    ss = st.session_state
    root = state.active_root()
    try:
        config = TrainConfig(
            model=model, data=None if state.is_demo(root) else str(root), modalities=tuple(ss["train_mods"]),
            image_size=int(ss["train_size"]), epochs=int(ss["train_epochs"]), batch_size=int(ss["train_batch"]),
            lr=float(ss["train_lr"]), max_minutes=float(ss["train_minutes"]) or None, seed=int(ss["train_seed"]),
            # Only what the user changed: the model's defaults stay its own.
            model_options={k: v for k, (v, default) in values.items() if v != default},
        )
        run_jobs.check_train_config(config)
    except UADError as exc:
        st.error(f"Cannot start: {md(exc)}.")
        return
    problem = _check_dataset(list(config.modalities))
    if problem:
        st.error(f"Cannot train on this dataset: {md(problem)}.")
        return
    try:
        run_dir = run_jobs.launch_train(config, name=ss["train_name"].strip() or None, tags=ss["train_tags"].split(),
                                    note=ss["train_note"])
    except UADError as exc:
        st.error(f"Cannot start: {md(exc)}.")
        return
    except OSError as exc:
        st.error(f"Could not start the training process: {md(exc)}")
        return
    ss["train_last"] = run_dir.name
    st.toast(f"Started {md(run_dir.name)}")


# -- one run ------------------------------------------------------------------------------------------------
def _heading(v: run_jobs.RunView) -> str:
    folder = v.info.name
    title = f"**{md(v.name)}** {code(folder)}" if v.name != folder else f"**{md(folder)}**"
    tags = " ".join(f":violet-badge[{md(t)}]" for t in v.tags)
    cfg = v.info.config.get("train") or {}
    detail = " ".join(cfg.get("modalities", [])) + (f" · {cfg['image_size']} px" if cfg.get("image_size") else "")
    return (f"{STATE_ICON.get(v.label, ':material/help:')} {title} {tags}  \n{md(v.info.model)} · {md(v.label)}"
            + (f" · {md(detail)}" if detail else ""))


def _manage(v: run_jobs.RunView) -> None:
    """Name, tags and note; archive; delete after a confirmation. Refused by uad for active runs."""
    folder = v.info.name
    with st.popover("Manage", width="stretch"):
        name = st.text_input("Name", value=v.info.meta.get("name") or "", key=f"meta_name::{folder}", max_chars=run_meta.MAX_NAME)
        tags = st.text_input("Tags (space-separated)", value=" ".join(v.tags), key=f"meta_tags::{folder}")
        note = st.text_area("Note", value=v.note, key=f"meta_note::{folder}", height=80)
        if st.button("Save", key=f"meta_save::{folder}", type="primary"):
            _act(lambda: run_meta.update_meta(v.path, name=name, tags=tags.split(), note=note), f"Saved {md(folder)}.")
        st.divider()
        blocked = "Cancel the run first." if v.active else None
        c1, c2 = st.columns(2)
        if c1.button("Archive", key=f"archive::{folder}", disabled=v.active, help=blocked or "Move to runs/.archive/ (restorable)"):
            _act(lambda: run_jobs.archive_run(v.path), f"Archived {md(folder)}.")
        if c2.button("Delete…", key=f"delete::{folder}", disabled=v.active, help=blocked or "Delete for good (asks first)"):
            st.session_state[f"confirm_delete::{folder}"] = True
        if st.session_state.get(f"confirm_delete::{folder}") and not v.active:
            st.warning(f"Delete **{md(folder)}** and everything in it (checkpoints, evaluation) for good?")
            d1, d2 = st.columns(2)
            if d1.button("Yes, delete", key=f"delete_yes::{folder}", type="primary"):
                st.session_state.pop(f"confirm_delete::{folder}", None)
                _act(lambda: run_jobs.delete_run(v.path), f"Deleted {md(folder)}.")
            if d2.button("Keep it", key=f"delete_no::{folder}"):
                st.session_state.pop(f"confirm_delete::{folder}", None)
                st.rerun()


def _act(action, done: str) -> None:
    try:
        action()
    except (UADError, OSError) as exc:
        st.error(md(exc))
        return
    st.toast(done)
    st.rerun()  # the whole page: the archive list below changes too


def _run_card(v: run_jobs.RunView) -> None:
    folder = v.info.name
    with st.container(border=True):
        head, bar, buttons = st.columns([4, 3, 3], vertical_alignment="center")  # room for "Resume" at 1280 px
        head.markdown(_heading(v))
        if v.epochs or v.active:
            bar.progress(v.progress, text=md(v.outcome))
        else:
            bar.caption(md(v.outcome))
        b1, b2 = buttons.columns(2)
        if v.active:
            if b1.button("Cancel", key=f"cancel::{folder}"):
                st.toast(md(run_jobs.cancel_run(v.path)))
        elif v.resumable:
            with b1.popover("Resume"):
                total = st.number_input("Total epochs", min_value=max(v.epochs_done, 1), value=max(v.epochs, v.epochs_done, 1),
                                        key=f"resume_epochs::{folder}")
                if st.button("Resume training", key=f"resume::{folder}", type="primary"):
                    try:
                        run_jobs.resume_run(v.path, int(total) if int(total) != v.epochs else None)
                        st.toast(f"Resumed {md(folder)}")
                    except (UADError, OSError) as exc:
                        st.error(f"Could not resume: {md(exc)}")
        with b2:
            _manage(v)
        if v.note:
            st.caption(md(v.note))
        if v.state == "failed":
            st.error(f"Run {md(v.outcome)}")
            if v.log:
                st.code(v.log, language=None)
        h = history.read_history(v.path)
        kept = history.samples_by_epoch(v.path)
        if not (h.epochs or h.steps or kept):
            return
        if h.last is not None:
            st.caption(_last_epoch_words(h))
        open_now = v.active or folder == st.session_state.get("train_last")
        with st.expander("Loss, learning rate and speed, sample reconstructions", expanded=open_now):
            loss_tab, rates_tab, samples_tab = st.tabs(["Loss", "Learning rate and speed", "Samples by epoch"])
            subtitle = _subtitle(v)
            with loss_tab:
                fig = figures.loss_figure(h, _smoothing(), _log_y(), title=f"Loss · {v.name}", subtitle=subtitle)
                ui.plot(fig, key=f"loss::{folder}", name=figures.file_stem("loss", v.name, v.info.training_data["name"]))
                if h.superseded:
                    st.caption(f"{h.superseded} records of epochs trained again after a stop are not drawn: each epoch "
                               "appears once, as last trained. Hollow markers: an epoch stopped before its end.")
            with rates_tab:
                if h.lr_keys or any(r.slices_per_s is not None for r in h.epochs):
                    fig = figures.rates_figure(h, title=f"Learning rate and speed · {v.name}", subtitle=subtitle)
                    ui.plot(fig, key=f"rates::{folder}", name=figures.file_stem("lr-speed", v.name, v.info.training_data["name"]))
                    if not h.lr_keys:
                        st.caption("This run was trained before the learning rate was recorded per epoch.")
                else:
                    st.caption("No epoch finished yet.")
            with samples_tab:
                _samples(v, kept)


def _last_epoch_words(h: history.History) -> str:
    last = h.last
    words = [f"last epoch ({last.epoch}{', stopped before its end' if last.partial else ''}): "
             f"validation loss {ui.fmt(last.val_loss, 4)}"]
    if last.slices_per_s is not None:
        words.append(f"{last.slices_per_s:.0f} slices/s")
    if last.lr:
        words.append("lr " + ", ".join(f"{v:.3g}" for v in last.lr.values()))
    if last.gpu_memory_mb is not None:
        words.append(f"GPU peak {last.gpu_memory_mb:.0f} MB")
    if h.best_val_loss is not None:
        words.append(f"best validation loss {ui.fmt(h.best_val_loss, 4)}")
    return " · ".join(words)


def _subtitle(v: run_jobs.RunView) -> str:
    """What a run's charts come from: model, folder and training data (a download carries it)."""
    return f"{v.info.model} · {v.info.name} · trained on {v.info.training_data['name']}"


def _samples(v: run_jobs.RunView, kept: list) -> None:
    """The sample reconstructions of one epoch, any kept epoch chosen on a slider (the latest first)."""
    if not kept:
        st.caption("No sample reconstructions yet: they are saved after each epoch.")
        return
    epochs = [e for e, _ in kept]
    key = f"samples_epoch::{v.info.name}"
    if st.session_state.get(key) not in epochs or v.active:  # a running run follows its latest epoch
        st.session_state[key] = epochs[-1]
    if len(epochs) > 1:
        st.select_slider("Epoch", epochs, key=key, help=f"Pictures are kept for up to {history.SAMPLE_EPOCHS_KEPT} "
                         "epochs, spread over the run (the first and the latest always).")
    epoch = st.session_state[key]
    info = history.samples_info(v.path)
    rows = " / ".join(info.get("rows") or ["input", "reconstruction", "|difference|"])
    shown = ", ".join(f"{s['case_id']} slice {s['slice_index']}" for s in info.get("slices") or [])
    st.image(str(dict(kept)[epoch]), width=720, output_format="PNG",
             caption=f"After epoch {epoch}: {rows} (rows) of {len(info.get('slices') or []) or 4} fixed validation "
                     f"slices" + (f" ({shown})" if shown else ""))


def _smoothing() -> float:
    return float(st.session_state.get(KEPT, {}).get("train_smoothing", VIEW_DEFAULTS["train_smoothing"]))


def _log_y() -> bool:
    return bool(st.session_state.get(KEPT, {}).get("train_log_y", VIEW_DEFAULTS["train_log_y"]))


def _chart_controls() -> None:
    """How loss curves are drawn on this page: TensorBoard's smoothing, a log axis."""
    c1, c2, _ = st.columns([2, 1, 2], vertical_alignment="bottom")
    c1.slider("Loss smoothing", 0.0, 0.99, step=0.01, key=_kept("train_smoothing", VIEW_DEFAULTS["train_smoothing"]),
              help="Exponential moving average of the step losses, as TensorBoard draws it (debiased; 0 = raw). The "
                   "raw line stays faint behind the smoothed one; epoch and validation points are never smoothed.")
    c2.toggle("Log loss axis", key=_kept("train_log_y", VIEW_DEFAULTS["train_log_y"]),
              help="Loss on a logarithmic axis (values at or below 0, such as a critic's, are not drawn there).")
    _keep("train_smoothing")
    _keep("train_log_y")


def _runs_table(views: list[run_jobs.RunView]) -> list[run_jobs.RunView]:
    """Every run with its hyper-parameters and results so far, filtered; returns the runs that pass the filter."""
    c1, c2, c3 = st.columns([2, 1, 1])
    text = c1.text_input("Filter runs", key=_kept("train_filter", ""), placeholder="words in a name, folder, tag or note")
    models = c2.multiselect("Model", sorted({v.info.model for v in views}), key=_kept("train_filter_models", []))
    states = c3.multiselect("Status", sorted({v.label for v in views}), key=_kept("train_filter_states", []))
    for k in ("train_filter", "train_filter_models", "train_filter_states"):
        _keep(k)
    shown = [v for v in views if monitor.matches(v, text, models, states)]
    if not shown:
        st.caption("No run matches the filter.")
        return shown
    df = pd.DataFrame(monitor.runs_table(shown))
    numbers = {"best val loss": "%.4f", "last val loss": "%.4f", "train loss": "%.4f", "slices/s": "%.0f", "lr": "%.0e",
               "batch": "%d", "size": "%d", "seed": "%d", "budget (min)": "%g"}
    config = {c: st.column_config.NumberColumn(c, format=f) for c, f in numbers.items() if c in df.columns}
    config["run"] = st.column_config.TextColumn("run", pinned=True, help="the run's name (its folder when unnamed)")
    if "train loss" in config:
        config["train loss"] = st.column_config.NumberColumn("train loss", format="%.4f", help="the last epoch's mean "
                                                             "training loss: 'loss' where the model has one, else its first")
    st.dataframe(df, hide_index=True, width="stretch", height=min(38 + 35 * len(df), 400), column_config=config,
                 placeholder="–", key="train_runs_table")
    st.caption(f"{len(shown)} of {len(views)} runs. Click a column header to sort; model options follow the training "
               "settings (empty where a model has no such option). Losses are the last epoch's, each epoch once.")
    return shown


def _runs_panel() -> None:
    views = state.list_run_views(include_shipped=False, warn=True)
    if not views:
        st.info("No run yet: start one above.")
    else:
        shown = _runs_table(views)
        show_all = st.toggle(f"Show all {len(shown)} runs", key="train_show_all") if len(shown) > SHOWN else False
        for v in shown if show_all else shown[:SHOWN]:
            _run_card(v)
    active = any(v.active for v in views)
    if active != st.session_state.get("train_polling_fast"):
        st.session_state["train_polling_fast"] = active
        st.rerun()  # switch polling speed (the interval is fixed when the fragment is defined)


def _overlay() -> None:
    """Several runs' loss curves on one figure."""
    views = [v for v in state.list_run_views(include_shipped=True) if (v.path / "metrics.jsonl").is_file()]
    if not views:
        return
    st.subheader("Compare loss curves")
    by_folder = {v.info.name: v for v in views}
    c1, c2 = st.columns([3, 1])
    chosen = c1.multiselect("Runs", list(by_folder), key="train_overlay", format_func=lambda n: ui.run_label(by_folder[n]),
                            default=[n for n in list(by_folder)[:2] if not by_folder[n].info.shipped] or None)
    curve = c2.segmented_control("Curve", ["validation", "training"], default="validation", key="train_overlay_curve")
    if not chosen:
        st.caption("Choose runs to overlay their loss curves.")
        return
    curve = curve or "validation"
    series = [(by_folder[n].name, history.read_history(by_folder[n].path)) for n in chosen]
    data = sorted({by_folder[n].info.training_data["name"] for n in chosen})
    title = f"{'Validation' if curve == 'validation' else 'Training'} loss of {len(chosen)} run{'s' if len(chosen) > 1 else ''}"
    fig = figures.overlay_figure(series, curve, _smoothing(), _log_y(), title=title,
                                 subtitle="trained on " + "; ".join(data))
    ui.plot(fig, key="train_overlay_chart", name=figures.file_stem(f"{curve}-loss", "+".join(by_folder[n].name for n in chosen),
                                                                     "+".join(data)))
    st.caption("Each epoch once (a stopped and resumed run shows its epochs as last trained); smoothing and the log "
               "axis as set above.")


def _archived() -> None:
    archived = state.list_run_views(include_shipped=False, archived=True)
    if not archived:
        return
    with st.expander(f"Archived runs ({len(archived)})"):
        for v in archived:
            folder = v.info.name
            c1, c2, c3 = st.columns([5, 1, 1], vertical_alignment="center")
            c1.markdown(md(ui.run_label(v)))
            if c2.button("Restore", key=f"restore::{folder}"):
                _act(lambda: run_jobs.restore_run(v.path), f"Restored {md(folder)}.")
            if c3.button("Delete…", key=f"adelete::{folder}"):
                st.session_state[f"confirm_adelete::{folder}"] = True
            if st.session_state.get(f"confirm_adelete::{folder}"):
                st.warning(f"Delete the archived run **{md(folder)}** for good?")
                if st.button("Yes, delete", key=f"adelete_yes::{folder}", type="primary"):
                    st.session_state.pop(f"confirm_adelete::{folder}", None)
                    _act(lambda: run_jobs.delete_run(v.path), f"Deleted {md(folder)}.")


ui.page_header("Train", "Each run is a separate `python -m uad train` process writing to its own folder under runs/: "
                        "it keeps going if you close the tab, and every tab sees the same state.")
_form()
st.subheader("Runs")
_chart_controls()
# Poll fast while a run is active, slowly otherwise (to notice runs started from other tabs).
fast = any(v.active for v in state.list_run_views(include_shipped=False))
st.session_state["train_polling_fast"] = fast
st.fragment(run_every=2 if fast else 10)(_runs_panel)()
_archived()
_overlay()
