"""Data layer: discovery → loading → preprocessing → slice store → splits. See docs/ARCHITECTURE.md."""

from uad.data.cases import MODALITIES, Case, Skipped, discover_cases
from uad.data.preprocess import PreprocessConfig, PreprocessedCase, SliceGeometry, preprocess_case
from uad.data.splits import DEFAULT_RATIOS, parse_ratios, split_cases
from uad.data.store import SliceStore, build_store, store_dir
from uad.data.volumes import CaseVolumes, load_case

__all__ = [
    "MODALITIES", "Case", "Skipped", "discover_cases", "CaseVolumes", "load_case", "PreprocessConfig",
    "PreprocessedCase", "SliceGeometry", "preprocess_case", "SliceStore", "build_store", "store_dir",
    "DEFAULT_RATIOS", "parse_ratios", "split_cases",
]
