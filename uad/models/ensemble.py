"""An ensemble: several trained runs' anomaly maps, each divided by its own healthy calibration, then averaged.

Models with different inductive biases miss in different places; dividing each map by the value its own
healthy validation pixels reach at a low false-positive rate puts them on one scale before averaging (a
common, training-free lever; the README says what it measured). An ensemble is a model like any other
(``create_model("ensemble", members=..., scales=...)``), saved as one checkpoint holding every member's
weights, so evaluating, comparing, exploring and reporting it need nothing special. It is built from
trained runs (``uad ensemble``, ``uad.evaluation.ensembles``), never trained itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from uad.core.errors import ConfigError
from uad.models.base import AnomalyModel, AnomalyOutput
from uad.models.registry import create_model, register_model

MAX_MEMBERS = 8


@register_model()
class Ensemble(AnomalyModel):
    """Mean of the members' maps, each divided by its scale (its own healthy calibration threshold) and multiplied by
    the smallest scale (so the mean stays in [0, 1])."""

    name = "ensemble"
    description = "the average of several trained runs' anomaly maps, each on the scale of its own healthy calibration"
    trainable = False

    def __init__(self, in_channels: int = 1, image_size: int = 128, members: list | None = None,
                 scales: list | None = None):
        members, scales = list(members or []), [float(s) for s in (scales or [])]
        super().__init__(in_channels, image_size, members=members, scales=scales)
        if not 2 <= len(members) <= MAX_MEMBERS:
            raise ConfigError(f"an ensemble has 2 to {MAX_MEMBERS} members, got {len(members)}")
        if len(scales) != len(members) or not all(s > 0 and s == s and s != float("inf") for s in scales):
            raise ConfigError("an ensemble needs one finite scale > 0 per member")
        nets = []
        for m in members:
            if not isinstance(m, dict) or not isinstance(m.get("model"), str) or not isinstance(m.get("hparams"), dict):
                raise ConfigError(f"an ensemble member must be {{'model': name, 'hparams': {{...}}}}, got {m!r:.120}")
            if m["model"] == self.name:
                raise ConfigError("an ensemble cannot contain an ensemble")
            hp = dict(m["hparams"])
            if hp.get("in_channels", in_channels) != in_channels or hp.get("image_size", image_size) != image_size:
                raise ConfigError("every ensemble member must take the ensemble's channels and image size")
            hp.update(in_channels=in_channels, image_size=image_size)
            nets.append(create_model(m["model"], **hp))
        self.members = nn.ModuleList(nets)
        self.register_buffer("scale", torch.tensor(scales, dtype=torch.float32), persistent=False)

    @classmethod
    def check_parts(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """The ensemble's hyper-parameters as a checkpoint records them: each member's checked by its own model, as
        the record of a trained run (an option it predates at the value it was trained with)."""
        from uad.models.registry import recorded_hparams

        unknown = sorted(set(hparams) - {"in_channels", "image_size", "members", "scales"})
        if unknown:
            raise ConfigError(f"an ensemble has no option {', '.join(unknown)}")
        members, scales = hparams.get("members"), hparams.get("scales")
        if not isinstance(members, list) or not isinstance(scales, list) or not 2 <= len(members) <= MAX_MEMBERS \
                or len(scales) != len(members):
            raise ConfigError(f"an ensemble needs 2 to {MAX_MEMBERS} members and one scale each")
        checked = []
        for m in members:
            if not isinstance(m, dict) or set(m) != {"model", "hparams"} or not isinstance(m["hparams"], dict) \
                    or not isinstance(m["model"], str) or m["model"] == cls.name:
                raise ConfigError(f"an ensemble member must be {{'model': name, 'hparams': {{...}}}}, got {m!r:.120}")
            checked.append({"model": m["model"], "hparams": recorded_hparams(m["model"], m["hparams"])})
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 < s < float("inf")):
                raise ConfigError(f"an ensemble's scales must be finite numbers > 0, got {s!r:.40}")
        return {**hparams, "members": checked}

    def training_step(self, x: Tensor, optimizers: dict[str, Any], progress: float) -> dict[str, float]:
        raise ConfigError("an ensemble is built from trained runs (python -m uad ensemble), not trained")

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        raise ConfigError("an ensemble is built from trained runs (python -m uad ensemble), not trained")

    @torch.no_grad()
    def validation_loss(self, x: Tensor) -> Tensor:
        return torch.stack([m.validation_loss(x) for m in self.members]).mean()

    @torch.no_grad()
    def anomaly_map(self, x: Tensor, residual: str | None = None, channels=None) -> AnomalyOutput:
        """Each member's map (its own residual, or ``residual`` for all) over its scale, averaged; the slice score
        likewise; the reconstruction is the members' mean."""
        maps, scores, recons = [], [], []
        # Each map over its scale, times the smallest scale: the same ranking as map / scale, but every term stays
        # at or below its member's map, so the mean stays in [0, 1], where the pixel metrics' histograms live (a
        # map over 1 would be clipped into their top bin, and its pixel AP lost).
        floor = self.scale.min()
        for m, s in zip(self.members, self.scale):
            out = m.anomaly_map(x, residual=residual, channels=channels)
            maps.append(out.anomaly_map.float() * (floor / s))
            scores.append(out.pred_score.float() * (floor / s))
            if out.reconstruction is not None:
                recons.append(out.reconstruction.float())
        recon = torch.stack(recons).mean(dim=0) if recons else None
        return AnomalyOutput(torch.stack(maps).mean(dim=0), torch.stack(scores).mean(dim=0), recon)
