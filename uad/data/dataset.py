"""Torch datasets over the slice store."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from uad.data.store import SliceStore


class SliceDataset(Dataset):
    """Slices of some cases of a store as float32 tensors (C, H, W) in [0, 1].

    ``healthy_only`` keeps labelled slices without tumour (what the models train on); unlabelled cases
    are then left out, since nothing says their slices are healthy.
    ``with_masks`` returns ``(image, tumour, brain)`` instead of the image alone.
    """

    def __init__(self, store: SliceStore, case_ids: Sequence[str], healthy_only: bool = False, with_masks: bool = False):
        self.store = store
        table = store.table[store.table.case_id.isin(set(case_ids))]
        if healthy_only:
            table = table[table.labelled & ~table.label]
        self.table = table.reset_index(drop=True)
        self.with_masks = with_masks
        self._case_ids = list(dict.fromkeys(self.table.case_id))
        case_pos = {cid: i for i, cid in enumerate(self._case_ids)}
        self._case = self.table.case_id.map(case_pos).to_numpy(np.int64)
        self._row = self.table.row.to_numpy(np.int64)
        self._images = None  # memory maps opened lazily, so the dataset pickles cheaply to workers

    def __len__(self) -> int:
        return len(self.table)

    def _arrays(self):
        if self._images is None:
            cases = [self.store.case(cid) for cid in self._case_ids]
            self._images = [c.images for c in cases]
            self._tumour = [c.tumour for c in cases]
            self._brain = [c.brain for c in cases]
        return self._images

    def __getitem__(self, i: int):
        images = self._arrays()
        c, r = self._case[i], self._row[i]
        image = torch.from_numpy(images[c][r].astype(np.float32))
        if not self.with_masks:
            return image
        return image, torch.from_numpy(np.array(self._tumour[c][r])), torch.from_numpy(np.array(self._brain[c][r]))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_images"] = None
        return state
