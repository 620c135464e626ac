"""Evaluation: metrics, cohort scoring, evaluation summaries, the metric vocabulary (column spec), figures,
the HTML report and cross-validation.
"""
