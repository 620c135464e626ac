"""Train: launch ``python -m uad train`` as a separate process and watch every run from its folder on disk."""

from __future__ import annotations

import time

import streamlit as st

import ui
from uad import jobs, runs
from uad.data.cases import MODALITIES
from uad.data.demo import demo_ready
from uad.models import list_models, model_options

ABOUT = {
    "autoencoder": "convolutional autoencoder",
    "vae": "variational autoencoder",
    "gan": "f-AnoGAN (WGAN-GP + encoder)",
    "ganomaly": "GANomaly",
    "vit": "ViT autoencoder with context dropout",
}
LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
# Material icons: emoji fonts are often missing on Linux desktops and headless browsers.
STATE_ICON = {"queued": ":grey[:material/schedule:]", "running": ":blue[:material/autorenew:]",
              "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
              "cancelled": ":orange[:material/cancel:]"}
SHOWN = 8  # runs listed before "show all"


def _option_widget(col, model: str, name: str, typ: type, default):
    label = name.replace("_", " ")
    key = f"opt::{model}::{name}"
    if typ is bool:
        return col.checkbox(label, value=default, key=key)
    if typ is int:
        return col.number_input(label, value=int(default), step=1, key=key)
    if typ is float:
        return col.number_input(label, value=float(default), format="%g", key=key)
    return col.text_input(label, value=str(default), key=key)


def _check_dataset(modalities: list[str]) -> str | None:
    root = ui.active_root()
    if ui.is_demo(root) and not demo_ready():
        return None  # the trainer generates the demo cohort itself
    cases, _, error = ui.discover(root)
    if error:
        return error
    usable = [c for c in cases if all(m in c.modalities for m in modalities)]
    if not usable:
        return f"no case in {root} has all of {', '.join(modalities)}"
    if not any(c.labelled for c in usable):
        return f"no labelled case in {root} has all of {', '.join(modalities)}: the patient split needs labelled cases"
    return None


def _form() -> None:
    model = st.columns([1, 2])[0].selectbox("Model", list_models(), key="train_model", format_func=lambda m: f"{m} — {ABOUT.get(m, '')}")
    options = model_options(model)
    with st.form("train_form"):
        c1, c2, c3, c4 = st.columns(4)
        modalities = c1.multiselect("Modalities (input channels)", list(MODALITIES), default=["flair"], key="train_mods")
        size = c2.select_slider("Image size (px)", options=list(range(64, 257, 16)), value=128, key="train_size")
        epochs = c3.number_input("Epochs", 1, 10_000, 20, key="train_epochs")
        batch = c4.number_input("Batch size", 1, 4096, 32, key="train_batch")
        c1, c2, c3, c4 = st.columns(4)
        lr = c1.select_slider("Learning rate", options=LEARNING_RATES, value=1e-4, format_func=lambda v: f"{v:g}", key="train_lr")
        minutes = c2.number_input("Time budget (minutes, 0 = none)", 0.0, 10_000.0, 0.0, step=5.0, key="train_minutes")
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed")
        c4.markdown(f"**Dataset**  \n`{ui.dataset_label(ui.active_root())}`")
        values = {}
        with st.expander(f"{model} options", expanded=model == "vit"):
            cols = st.columns(4)
            for i, (name, (typ, default)) in enumerate(options.items()):
                values[name] = (_option_widget(cols[i % 4], model, name, typ, default), default)
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return
    if not modalities:
        st.error("Choose at least one modality.")
        return
    problem = _check_dataset(modalities)
    if problem:
        st.error(f"Cannot train on this dataset: {problem}.")
        return
    root = ui.active_root()
    args = ["--model", model, "--modalities", *modalities, "--image-size", str(size), "--epochs", str(int(epochs)),
            "--batch-size", str(int(batch)), "--lr", f"{lr:g}", "--seed", str(int(seed))]
    if minutes > 0:
        args += ["--max-minutes", f"{minutes:g}"]
    if not ui.is_demo(root):
        args += ["--data", str(root)]
    for name, (value, default) in values.items():
        if value != default:  # pass only what the user changed: the CLI's defaults are the model's
            args += [f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    try:
        run_dir = jobs.launch_train(args, model)
    except OSError as exc:
        st.error(f"Could not start the training process: {exc}")
        return
    st.session_state["train_last"] = run_dir.name
    st.toast(f"Started {run_dir.name}")


def _run_card(v: jobs.RunView) -> None:
    name = v.info.name
    with st.container(border=True):
        head, bar, buttons = st.columns([3, 3, 2], vertical_alignment="center")
        cfg = v.info.config.get("train") or {}
        detail = " ".join(cfg.get("modalities", [])) + (f" · {cfg['image_size']} px" if cfg.get("image_size") else "")
        head.markdown(f"{STATE_ICON.get(v.state, ':material/help:')} **{name}**  \n{v.info.model} · {v.state}" + (f" · {detail}" if detail else ""))
        if v.epochs:
            text = f"epoch {v.epoch} / {v.epochs}"
            started = v.info.status.get("started")
            if v.state == "running" and started:
                text += f" · {time.time() - started:.0f} s"
            if v.state == "queued":
                text = "starting (preparing data)…"
            bar.progress(v.progress, text=text)
        elif v.state == "queued":
            bar.progress(0.0, text="starting (preparing data)…")
        if v.active:
            if buttons.button("Cancel", key=f"cancel::{name}"):
                st.toast(jobs.cancel_run(v.path))
        elif v.resumable:
            with buttons.popover("Resume"):
                total = st.number_input("Total epochs", min_value=max(v.epoch, 1), value=max(v.epochs, v.epoch, 1),
                                        key=f"resume_epochs::{name}")
                if st.button("Resume training", key=f"resume::{name}", type="primary"):
                    try:
                        jobs.resume_run(v.path, int(total) if int(total) != v.epochs else None)
                        st.toast(f"Resumed {name}")
                    except OSError as exc:
                        st.error(f"Could not resume: {exc}")
        if v.state == "failed":
            st.error(f"Run failed: {v.error or 'no error recorded'}")
            if v.log:
                st.code(v.log, language=None)
        elif v.state == "cancelled" and v.info.status.get("reason"):
            st.caption(f"Cancelled ({v.info.status['reason']}).")
        records = runs.read_metrics(v.path)
        if records:
            last = records[-1]
            st.caption(f"last epoch: validation loss {ui.fmt(last.get('val_loss'), 4)} · "
                       f"{last.get('slices_per_s', 0):.0f} slices/s")
            if v.active or name == st.session_state.get("train_last"):
                st.plotly_chart(ui.loss_figure(records), width="stretch", key=f"loss::{name}", config={"displayModeBar": False})
            else:
                with st.expander("Loss curves"):
                    st.plotly_chart(ui.loss_figure(records), width="stretch", key=f"loss::{name}", config={"displayModeBar": False})


def _runs_panel() -> None:
    views = ui.list_run_views(include_shipped=False)
    if not views:
        st.info("No run yet: start one above.")
        return
    show_all = st.toggle(f"Show all {len(views)} runs", key="train_show_all") if len(views) > SHOWN else False
    for v in views if show_all else views[:SHOWN]:
        _run_card(v)
    active = any(v.active for v in views)
    if active != st.session_state.get("train_polling_fast"):
        st.session_state["train_polling_fast"] = active
        st.rerun()  # switch polling speed (the interval is fixed when the fragment is defined)


ui.page_header("Train", "Each run is a separate `python -m uad train` process writing to its own folder under runs/: "
                        "it keeps going if you close the tab, and every tab sees the same state.")
_form()
st.subheader("Runs")
# Poll fast while a run is active, slowly otherwise (to notice runs started from other tabs).
fast = any(v.active for v in ui.list_run_views(include_shipped=False))
st.session_state["train_polling_fast"] = fast
st.fragment(run_every=2 if fast else 10)(_runs_panel)()
