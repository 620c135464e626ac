"""Data layer: discovery → loading → preprocessing → slice store → splits. See docs/ARCHITECTURE.md.

Names are imported lazily, so ``from uad.data.cases import ...`` does not pay for cv2, scipy and pandas.
"""

from importlib import import_module

_WHERE = {
    "MODALITIES": "cases", "Case": "cases", "Skipped": "cases", "discover_cases": "cases",
    "CaseVolumes": "volumes", "load_case": "volumes",
    "PreprocessConfig": "preprocess_config", "WorkingCase": "preprocess", "SliceGeometry": "preprocess",
    "preprocess_case": "preprocess",
    "SliceStore": "store", "build_store": "store", "store_dir": "store", "load_working_case": "store",
    "DEFAULT_RATIOS": "splits", "parse_ratios": "splits", "split_cases": "splits",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'uad.data' has no attribute {name!r}")
    return getattr(import_module(f"uad.data.{_WHERE[name]}"), name)
