"""BraTS segmentation label conventions: which sub-region each label value names.

BraTS 2021 labels 1 (necrotic core), 2 (oedema), 4 (enhancing tumour); BraTS 2023 (GLI) moved enhancing
tumour to 3; BraTS 2017-18 used 3 for non-enhancing tumour beside 4. Whole tumour is every label > 0 in
all of them (``uad.data.volumes`` builds the tumour mask that way). The convention is read from the
labels a segmentation holds; a case without enhancing tumour (or without any tumour) cannot tell 2021
from 2023, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

NECROTIC, OEDEMA, ENHANCING, NON_ENHANCING = "necrotic core", "oedema", "enhancing tumour", "non-enhancing tumour"
NAMES_2021 = {1: NECROTIC, 2: OEDEMA, 4: ENHANCING}
NAMES_2023 = {1: NECROTIC, 2: OEDEMA, 3: ENHANCING}
NAMES_OLDER = {1: NECROTIC, 2: OEDEMA, 3: NON_ENHANCING, 4: ENHANCING}


@dataclass(frozen=True)
class Convention:
    """How a segmentation's labels are read: a sentence for the screen and a name per label value."""

    description: str
    names: dict[int, str]

    def name(self, value: int) -> str:
        return self.names.get(int(value), f"label {int(value)} (not a BraTS label)")


def convention(labels_present: set[int] | list[int]) -> Convention:
    """The BraTS convention of a segmentation, from the non-zero label values it holds."""
    present = {int(v) for v in labels_present if int(v) != 0}
    if not present:
        return Convention("No tumour is labelled in this case (its segmentation is all 0)", {})
    if 4 in present and 3 not in present:
        return Convention("BraTS 2021 labels (1, 2, 4)", dict(NAMES_2021))
    if 3 in present and 4 not in present:
        return Convention("BraTS 2023 labels (1, 2, 3)", dict(NAMES_2023))
    if 3 in present and 4 in present:
        return Convention("older BraTS labels (1, 2, 3, 4)", dict(NAMES_OLDER))
    # Only 1 and/or 2: no enhancing tumour, so 2021 and 2023 read the same.
    return Convention("BraTS labels 1 and 2 only (no enhancing tumour in this case, so 2021 and 2023 read alike)",
                      {1: NECROTIC, 2: OEDEMA})


def region(value: int, labels_present: set[int] | list[int]) -> str | None:
    """The sub-region a label value names in this segmentation, None for a value no convention uses."""
    return convention(labels_present).names.get(int(value))
