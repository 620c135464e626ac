"""Torch datasets over the slice store, and the same slices held in one tensor on the training device."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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

    @property
    def image_nbytes(self) -> int:
        """Bytes of every image slice of the dataset in float16 (as stored, and as held on an accelerator)."""
        if not len(self):
            return 0
        images = self._arrays()[0]
        return len(self) * int(np.prod(images.shape[1:])) * 2

    def images_on(self, device: torch.device | str) -> torch.Tensor:
        """Every image slice, in dataset order, as one (N, C, H, W) tensor on ``device``: float16 (the store's
        own, lossless: a batch converted to float32 equals the loader's) on an accelerator, float32 on the
        CPU (converted once here rather than per batch). Copied one case at a time, so host memory never
        holds a second copy of the whole set on its way to a GPU."""
        images = self._arrays()
        if not len(self):
            raise ValueError("no slices to hold")
        device = torch.device(device)
        dtype = torch.float32 if device.type == "cpu" else torch.float16
        out = torch.empty((len(self), *images[0].shape[1:]), dtype=dtype, device=device)
        for c, case_images in enumerate(images):
            at = np.flatnonzero(self._case == c)
            if len(at):
                part = torch.from_numpy(np.ascontiguousarray(case_images[self._row[at]]))
                out[torch.from_numpy(at).to(device)] = part.to(device, dtype)
        return out


class DeviceLoader:
    """Training batches gathered from slices held in one tensor on the device (``SliceDataset.images_on``):
    no per-slice reads, no collation, no host-to-device copy per batch.

    The batch indices come from the batch sampler a ``DataLoader`` over the positions would use, with the loader
    path's own sampler, generator and ``drop_last``, so with the same seed it yields exactly the batches, in the
    order, that a ``DataLoader`` over the dataset would (tests/test_train.py trains both ways to the same weights).
    """

    def __init__(self, images: torch.Tensor, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 drop_last: bool, sampler: Sampler | None = None):
        self.images = images
        self.dataset = range(len(images))
        self._generator = generator
        # The DataLoader's own batch sampler (its sampler, generator and drop_last), iterated directly: drawing
        # indices through a DataLoader cost ~100 µs a batch in its fetch-and-collate machinery, as long as the
        # gather of the batch itself (data_bench).
        self._batches = DataLoader(self.dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                   generator=generator, drop_last=drop_last).batch_sampler

    def __len__(self) -> int:
        return len(self._batches)

    def epoch_batches(self) -> Iterator[list[int]]:
        """One epoch's batch indices. What a DataLoader's iterator does when it is made (made at once, not at the
        first batch: tqdm.auto makes one it never uses): start the batch sampler, then draw its base seed from the
        generator. Doing the same keeps the generator's stream, hence every later batch, the loader path's."""
        batches = iter(self._batches)
        torch.empty((), dtype=torch.int64).random_(generator=self._generator)
        return batches

    def __iter__(self) -> Iterator[torch.Tensor]:
        batches = self.epoch_batches()
        if self.images.device.type == "cpu":
            # numpy's single-threaded take: a 2 MB batch is too small for torch's thread pool, whose wake-up
            # between batches cost milliseconds on a busy 2-core machine (measured 5k vs 150k slices/s).
            host = self.images.numpy()
            return (torch.from_numpy(host.take(np.asarray(b, dtype=np.int64), axis=0)) for b in batches)
        device = self.images.device
        return (self.images.index_select(0, torch.as_tensor(b, dtype=torch.int64).to(device)).float() for b in batches)
