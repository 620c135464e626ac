"""Anomaly maps of whole cases: raw map (per slice, working size) → × eroded brain mask → median filter → slice score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uad.data.preprocess import WorkingCase
from uad.scoring.postprocess import postprocess, slice_scores
from uad.scoring.recipe import PostprocessConfig
from uad.scoring.scorers import Scorer


@dataclass
class VolumeScores:
    """A case's scores at working size: post-processed maps and one score per slice."""

    maps: np.ndarray  # (S, H, W) float32, 0 outside the eroded brain
    scores: np.ndarray  # (S,) slice scores
    mask: np.ndarray  # (S, H, W) bool, the eroded brain mask the maps live in
    reconstruction: np.ndarray | None = None  # (S, C, H, W) for models that reconstruct


def score_slices(scorer: Scorer, images, brain, brain_pixels, config: PostprocessConfig) -> VolumeScores:
    """Score a stack of preprocessed slices (one case) end to end."""
    brain = np.asarray(brain, bool)
    raw, own, recon = scorer.raw(images, brain, brain_pixels)
    maps, mask = postprocess(raw, brain, config)
    return VolumeScores(maps, slice_scores(maps, mask, config, own), mask, recon)


def score_case(scorer: Scorer, case: WorkingCase, config: PostprocessConfig, rows: np.ndarray | None = None) -> VolumeScores:
    """Score a case (or the slices ``rows`` selects), fresh or from the slice store alike."""
    images, brain, pixels = case.images, case.brain, case.brain_pixels
    if rows is not None:
        images, brain, pixels = images[rows], brain[rows], pixels[rows]
    return score_slices(scorer, images, brain, pixels, config)

