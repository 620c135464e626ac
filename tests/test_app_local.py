"""One case that does not fit in memory costs a message, not the page."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app"))  # the app's helper module, as Home.py imports it

pytest.importorskip("streamlit")


# -- memory ------------------------------------------------------------------------------------------------
def test_out_of_memory_in_one_modality_is_a_message(tmp_path, monkeypatch):
    from conftest import phantom, write_case

    import ui
    from uad.data import volumes

    vols, seg = phantom()
    write_case(tmp_path, "C", vols, seg)
    real = volumes.load_case

    def load_case(case, modalities, *a, **k):
        if modalities == ("t1",):
            raise MemoryError
        return real(case, modalities, *a, **k)

    monkeypatch.setattr(volumes, "load_case", load_case)
    ui.load_display_case.clear()
    d = ui.load_display_case(str(tmp_path), "C", ("test",))
    assert "not enough memory" in d["errors"]["t1"] and "C_t1.nii.gz" in d["errors"]["t1"]
    assert sorted(d["mods"]) == ["flair", "t1ce", "t2"] and d["labels"] is not None
    assert all(isinstance(m, np.ndarray) for m in d["mods"].values())
    assert MemoryError in ui.APP_ERRORS  # what the Explore page catches around a case
