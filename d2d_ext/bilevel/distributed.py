"""Training in several processes under ``torchrun``: joining the process group, and the
collectives that keep every rank's state identical. Each function is a no-op in one process
(``world == 1``)."""

from __future__ import annotations

import os

import torch


def distributed_setup() -> tuple:
    """``(rank, world_size, device)``: joins the process group that ``torchrun`` describes
    (``WORLD_SIZE`` > 1: NCCL on GPUs, gloo on CPUs); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, device


def data_parallel(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """What the training step calls: ``model`` wrapped in DistributedDataParallel (which averages
    its gradients over the ranks in the backward pass) when ``world > 1``, else ``model`` itself."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_grads(module: torch.nn.Module, world: int) -> None:
    """Average the gradients of ``module`` over the ranks (a missing gradient counts as zero)."""
    if world == 1:
        return
    for p in module.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= world


def all_reduce_sum(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place; returns it."""
    if world > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def broadcast_buffers(module: torch.nn.Module, world: int, src: int = 0) -> None:
    """Copy rank ``src``'s buffers of ``module`` (e.g. BatchNorm statistics) to every rank."""
    if world == 1:
        return
    for buf in module.buffers():
        torch.distributed.broadcast(buf, src)


def barrier(world: int) -> None:
    """Wait until every rank gets here."""
    if world > 1:
        torch.distributed.barrier()
