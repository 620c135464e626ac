"""Anomaly maps of whole cases, made by one scoring recipe:

    raw map (per slice, working size, the recipe's residual) → × eroded brain mask → median filter → slice score
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uad.data.preprocess import WorkingCase
from uad.scoring.postprocess import postprocess, slice_scores, threshold_maps
from uad.scoring.recipe import ScoringRecipe
from uad.scoring.scorers import Scorer


@dataclass
class VolumeScores:
    """A case's scores at working size: post-processed maps and one score per slice, and the recipe that made them
    (its residual filled in with the model's own when the recipe named none)."""

    maps: np.ndarray  # (S, H, W) float32, 0 outside the eroded brain
    scores: np.ndarray  # (S,) slice scores
    mask: np.ndarray  # (S, H, W) bool, the eroded brain mask the maps live in
    reconstruction: np.ndarray | None = None  # (S, C, H, W) for models that reconstruct
    recipe: ScoringRecipe | None = None

    def prediction(self, threshold: float) -> np.ndarray:
        """The predicted anomaly (S, H, W) at ``threshold``, as every consumer computes it: map >= threshold inside
        the eroded brain, 3-D components smaller than the recipe's ``min_component`` dropped."""
        min_component = self.recipe.post.min_component if self.recipe is not None else 0
        return threshold_maps(self.maps, threshold, min_component) & self.mask


def score_slices(scorer: Scorer, images, brain, brain_pixels, recipe: ScoringRecipe) -> VolumeScores:
    """Score a stack of preprocessed slices (one case) end to end with ``recipe``."""
    brain = np.asarray(brain, bool)
    raw, own, recon = scorer.raw(images, brain, brain_pixels, residual=recipe.residual, channels=recipe.channels)
    maps, mask = postprocess(raw, brain, recipe.post)
    return VolumeScores(maps, slice_scores(maps, mask, recipe.post, own), mask, recon, recipe.for_model(scorer.model_residual()))


def score_case(scorer: Scorer, case: WorkingCase, recipe: ScoringRecipe, rows: np.ndarray | None = None) -> VolumeScores:
    """Score a case (or the slices ``rows`` selects), fresh or from the slice store alike."""
    images, brain, pixels = case.images, case.brain, case.brain_pixels
    if rows is not None:
        images, brain, pixels = images[rows], brain[rows], pixels[rows]
    return score_slices(scorer, images, brain, pixels, recipe)
