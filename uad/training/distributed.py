"""Data-parallel plumbing for the trainer under ``torchrun`` (every function is a no-op for one process).

Each rank reads its share of the slices; each optimizer's parameters are wrapped in their own
DistributedDataParallel (see ``ParameterGroup``), and the ranks agree on every decision that changes the
order of collective calls (stopping, divergence), so they stay in lock-step.
"""

from __future__ import annotations

import os
import warnings

import torch


def setup(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


class ParameterGroup(torch.nn.Module):
    """The parameters one optimizer updates, as a module DistributedDataParallel can wrap.

    Its forward runs whatever loss function it is given, so the model's own code computes the loss while
    DDP sees a forward over exactly these parameters, followed by one backward. GAN models train several
    networks with separate optimizers and backward passes per batch; a DDP per optimizer keeps each
    backward paired with one DDP forward, which a single DDP around the whole model could not.
    """

    def __init__(self, params: list[torch.nn.Parameter]):
        super().__init__()
        self.params = torch.nn.ParameterList(params)

    def forward(self, compute_loss):
        return compute_loss()


def wrap_data_parallel(model, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    from torch.nn.parallel import DistributedDataParallel

    for opt in optimizers.values():
        params = [p for group in opt.param_groups for p in group["params"]]
        # Every model keeps each optimized parameter in that optimizer's loss, so DDP need not search the
        # graph for unused ones. BatchNorm statistics are averaged once per epoch by sync_buffers.
        model.data_parallel[id(opt)] = DistributedDataParallel(ParameterGroup(params))
    # The WGAN-GP double backward leaves some critic gradients in another memory layout than DDP's bucket
    # views; DDP copies them, correctly, but warns every run.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def broadcast_params(model: torch.nn.Module) -> None:
    import torch.distributed as dist

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Average floating buffers (BatchNorm running statistics) across ranks; take rank 0's integer ones."""
    if world <= 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b.data)
            b.data /= world
        else:
            dist.broadcast(b.data, src=0)


def agree(stop: bool, time_frac: float, world: int, device: torch.device) -> tuple[bool, float]:
    """Across ranks: stop if any rank stops, and use the largest time fraction (keeps ranks in lock-step)."""
    if world <= 1:
        return stop, time_frac
    import torch.distributed as dist

    t = torch.tensor([float(stop), time_frac], dtype=torch.float32, device=device)  # NCCL needs GPU tensors
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0] > 0), float(t[1])


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any."""
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0] > 0)


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def rank_checksums(model: torch.nn.Module, world: int) -> list[str] | None:
    """SHA-1 of every rank's weights, gathered on all ranks (None when not distributed)."""
    if world <= 1:
        return None
    import hashlib

    import torch.distributed as dist

    h = hashlib.sha1()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    gathered: list[str | None] = [None] * world
    dist.all_gather_object(gathered, h.hexdigest())
    return [str(g) for g in gathered]
