"""Model options are bounded once, on the constructor's signature, and every check uses that declaration:
``uad train``'s flags, the app's Train form (``run_jobs.check_train_config``), training itself and the
checkpoint loader. Walked here for every numeric option of every model, at and just past its bounds."""

from __future__ import annotations

import math

import pytest

from uad import cli
from uad.core.errors import ConfigError, UADError
from uad.jobs import run_jobs
from uad.models import list_models, model_options
from uad.training import trainer
from uad.training.config import TrainConfig

SIZE = 256  # options bounded by the image size (noise_res, inpaint_groups) reach their declared maximum here


class _Accepted(Exception):
    """Raised where training would make its run folder: everything before it accepted the configuration."""


def _numeric(model):
    return [(name, opt) for name, opt in model_options(model).items() if opt.type in (int, float) and not opt.choices]


def _past(opt, side):
    if opt.type is int:
        return opt.low - 1 if side == "low" else opt.high + 1
    step = 1e-6 * max(1.0, abs(opt.low if side == "low" else opt.high))
    return opt.low - step if side == "low" else opt.high + step


def _form(model, name, value):
    """What the app's Train form does with a value: build the settings and check them (no folder)."""
    try:
        run_jobs.check_train_config(TrainConfig(model=model, image_size=SIZE, model_options={name: value}))
    except UADError as exc:
        return str(exc)
    return None


def _train(model, name, value, out, capsys):
    """``uad train`` with the option as a flag, up to where it would make the run folder."""
    argv = ["train", "--model", model, "--image-size", str(SIZE), "--epochs", "1", "--out", str(out), "--no-progress",
            f"--{name.replace('_', '-')}={value if isinstance(value, str) else repr(value)}"]  # = : "-inf" is no flag
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except _Accepted:
        return None
    except SystemExit as exc:  # argparse refused the flag's text
        code = exc.code
    assert code == 2, f"uad train {' '.join(argv)} exited {code}"
    return capsys.readouterr().err


@pytest.mark.parametrize("model", list_models())
def test_every_numeric_option_is_accepted_at_its_bounds_and_refused_just_past_them(model, tmp_path, capsys, monkeypatch):
    def claim(*args, **kwargs):
        raise _Accepted

    monkeypatch.setattr(trainer, "_claim_run_dir", claim)
    options = _numeric(model)
    assert options, f"{model} has no numeric option"
    for name, opt in options:
        assert opt.low is not None and opt.high is not None, f"{model} {name}: no declared bounds"
        for side in ("low", "high"):
            at = opt.low if side == "low" else opt.high
            assert _form(model, name, at) is None, f"{model} {name}={at}: the form refused a value at its bound"
            assert _train(model, name, at, tmp_path / "run", capsys) is None, f"{model} {name}={at}: training refused it"
            # The loader's check of a checkpoint's hyper-parameters is the same declaration.
            from uad.models import check_hparams

            check_hparams(model, {"image_size": SIZE, name: at})

            past = _past(opt, side)
            message = _form(model, name, past)
            assert message and name in message, f"{model} {name}={past}: the form accepted a value past its bound"
            err = _train(model, name, past, tmp_path / "run", capsys)
            assert err and name.replace("_", "-") in err.replace("_", "-"), (model, name, past, err)
            assert "Traceback" not in err
            assert not (tmp_path / "run").exists(), f"{model} {name}={past}: a run folder was left behind"
            with pytest.raises(ConfigError, match=name):
                check_hparams(model, {name: past})  # noqa: F821 - imported above, in this loop


@pytest.mark.parametrize("model", list_models())
def test_float_options_refuse_nan_and_infinity_before_anything_starts(model, tmp_path, capsys):
    floats = [name for name, opt in _numeric(model) if opt.type is float]
    for name in floats:
        for text in ("nan", "inf", "-inf"):
            with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
                TrainConfig(model=model, model_options={name: float(text)})
            err = _train(model, name, text, tmp_path / "run", capsys)
            assert "must be a finite number" in err and not (tmp_path / "run").exists()


def test_the_shared_sizes_are_bounded_too():
    """in_channels and image_size come from the data, but a checkpoint's record states them: bounded alike."""
    from uad.models import check_hparams, constructor_options

    for model in list_models():
        opts = constructor_options(model)
        assert (opts["in_channels"].low, opts["in_channels"].high) == (1, 4)
        with pytest.raises(ConfigError, match="in_channels must be between 1 and 4"):
            check_hparams(model, {"in_channels": 5})
        with pytest.raises(ConfigError, match="image_size must be a whole number"):
            check_hparams(model, {"image_size": 64.5})


def test_bad_settings_leave_no_run_folder(make_cohort, tmp_path, capsys):
    """Refused by training itself before it makes a folder, whatever called it (issue #17 O and I)."""
    root = make_cohort(2)
    base = ["train", "--model", "autoencoder", "--data", str(root), "--image-size", "64", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress"]
    for extra, expected in ((["--modalities", "flair", "flair"], "modality listed twice"),
                            (["--model", "vit", "--patch-size", "0"], "patch_size must be between 2 and 64"),
                            (["--model", "vit", "--num-heads", "0"], "num_heads must be between 1 and 64"),
                            (["--model", "vit", "--dropout", "1.5"], "dropout must be between 0 and 0.9"),
                            (["--base-channels", "0"], "base_channels must be between 1 and 256"),
                            (["--lr", "nan"], "finite")):
        capsys.readouterr()
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (extra, err)
        assert not (tmp_path / "run").exists(), extra
    config = TrainConfig(model="autoencoder", data=str(root), image_size=64, epochs=1)
    # Forced past the frozen config's own checks (as a careless caller could): train() checks again.
    object.__setattr__(config, "model_options", {"noise_std": math.nan})
    with pytest.raises(ConfigError, match="noise_std must be a finite number"):
        trainer.train(config, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
