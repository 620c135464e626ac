"""The demo cohort: what the CLI and the app use when no dataset is given."""

from __future__ import annotations

from pathlib import Path

from uad.core import paths

DEMO_SEED = 0


def demo_ready(root: Path | None = None) -> bool:
    return ((root or paths.demo_dir()) / "cohort.json").is_file()


def ensure_demo(progress: bool = True) -> Path:
    """Return the demo cohort's folder, generating it first if it is missing or incomplete."""
    from uad.data.synth import DEFAULT_CASES, generate_cohort

    root = paths.demo_dir()
    if not demo_ready(root):
        generate_cohort(root, n_cases=DEFAULT_CASES, seed=DEMO_SEED, progress=progress)
    return root


def resolve_data_root(data: str | Path | None, progress: bool = True) -> Path:
    """The dataset folder a command should use: the one given, else the demo cohort."""
    return Path(data) if data else ensure_demo(progress=progress)
