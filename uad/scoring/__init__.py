"""Scoring: the recipe (residual, post-processing, slice score, thresholds), scorers (models and baselines),
whole-case maps and their NIfTI export.
"""
