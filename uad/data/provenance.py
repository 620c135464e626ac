"""What a checkpoint was trained on, in words a user can cite: shown by the README, the CLI and the app.

A checkpoint's record (``uad.checkpoints.record``) may carry a ``training_data`` entry (the shipped ones do); otherwise
it is derived here from the recorded data root.
"""

from __future__ import annotations

from typing import Any

DEMO = {
    "name": "uad demo cohort (synthetic)",
    "description": "24 synthetic BraTS-layout cases generated from the MNI152 template that nilearn ships "
                   "(random deformation, tissue contrasts, bias field, noise, 0-2 simulated gliomas each).",
    "citation": "Synthetic; MNI152 template (Fonov et al., NeuroImage 2011) via nilearn.",
    "terms": "Generated locally; no patient data.",
}

REAL_DEV = {
    "name": "real_dev (25 real glioma patients)",
    "description": "19 BraTS 2018 training cases (FLAIR, T1, T1ce, T2; expert segmentations) and 6 BRATS 2013 "
                   "high-grade cases (FLAIR and T1ce) in BraTS 2021 layout; every patient, healthy slices only.",
    "citation": "Menze et al., IEEE TMI 2015; Bakas et al., Sci Data 2017; Bakas et al., arXiv:1811.02629.",
    "terms": "BraTS data-use terms and the TCIA data-usage policy (BraTS 2018 cases); CC BY-NC-SA 3.0 CH "
             "(BRATS 2013 cases, as shipped with DeepMedic). Weights trained on them are for research use.",
}


def training_data(recorded: dict[str, str] | None, demo: bool = False, root: str | None = None) -> dict[str, Any]:
    """What a checkpoint was trained on (never None): the ``training_data`` its record carries, else the
    demo cohort's description, else one made from the recorded data root."""
    if recorded:
        return {"name": "", "description": "", "citation": "", "terms": "", **recorded}
    if demo:
        return dict(DEMO)
    root = root or "unknown"
    return {"name": str(root).rstrip("/").split("/")[-1], "description": f"trained on {root}", "citation": "", "terms": ""}
