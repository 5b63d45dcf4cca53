"""Data-parallel PPO over ``torch.distributed`` (gloo on CPU, NCCL on CUDA), as torchrun starts it.

Every rank owns its own block of envs (its env noise comes from the run's key split by rank),
computes gradients on its own minibatches, and all-reduces them, with the loss, as one flat
buffer; the optimizer step then runs identically on every rank, so params stay bit-identical
without being broadcast. A non-finite gradient or loss on any rank makes the reduced buffer
non-finite on every rank, so every rank skips that step. Advantages are normalised with the
minibatch statistics of all ranks together, so N ranks with E envs each train like one process
with N*E envs whose minibatches are the union of the ranks' minibatches.

:class:`World` is the one object the kernel asks about ranks; a one-process run uses
:data:`SINGLE`, whose collectives are no-ops.
"""
from __future__ import annotations

import datetime
import os
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist

from kernel.tree import flatten, tree_map, unflatten

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = datetime.timedelta(minutes=5)


class World(NamedTuple):
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise mean of ``x`` over ranks."""
        if not self.distributed:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x / self.size

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x

    def mean_tree(self, tree):
        """Leafwise mean over ranks, all leaves in one flat all-reduce."""
        if not self.distributed:
            return tree
        leaves, treedef = flatten(tree)
        flat = self.mean(torch.cat([x.reshape(-1).float() for x in leaves]))
        out, at = [], 0
        for x in leaves:
            out.append(flat[at:at + x.numel()].view_as(x).to(x.dtype))
            at += x.numel()
        return unflatten(treedef, out)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[size, *x.shape]``: every rank's ``x``, on every rank."""
        if not self.distributed:
            return x.unsqueeze(0)
        out = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    def gather_tree(self, tree):
        return tree_map(self.gather, tree)

    def own(self, tree):
        """This rank's slice of a tree gathered by :meth:`gather_tree`."""
        return tree_map(lambda x: x[self.rank], tree)

    def concat_tree(self, tree):
        """Leaves joined along their first axis in rank order (0-d leaves: rank 0's)."""
        if not self.distributed:
            return tree
        return tree_map(lambda x: self.gather(x).flatten(0, 1) if x.dim() else self.gather(x)[0], tree)

    def chunk_tree(self, tree):
        """This rank's equal share, along the first axis, of a tree :meth:`concat_tree` joined."""
        if not self.distributed:
            return tree
        return tree_map(lambda x: x.chunk(self.size)[self.rank] if x.dim() else x, tree)

    def concat_lists(self, items: list) -> list:
        """Every rank's list of Python objects, joined in rank order."""
        if not self.distributed:
            return list(items)
        out = [None] * self.size
        dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]


SINGLE = World()


class Rehearsal(World):
    """Rank ``rank`` of ``size`` without its peers: the shapes, noise and graphs of that rank, every
    collective an identity (each rank's "every rank" is itself). What a compile helper builds to
    compile a data-parallel rank's graphs without joining its process group."""

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x] * self.size)

    def concat_lists(self, items: list) -> list:
        return list(items) * self.size


def launched() -> bool:
    """Inside a process that torchrun (or an equivalent launcher) started."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE"))


def join(device: str = "cpu") -> World:
    """The world this process belongs to: :data:`SINGLE` unless torchrun started it, in which case
    the process group is created (NCCL for CUDA devices, gloo otherwise) once."""
    if not launched():
        return SINGLE
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if world.distributed and not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return world


def leave() -> None:
    """Wait for every rank, then close the process group (a rank that exits with its group open
    can abort while the others still use it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def end_worker_rank() -> None:
    """End a rank other than 0 once it has left its group: its output flushed, then ``os._exit(0)``
    without the interpreter's teardown. These ranks write no files (rank 0 writes the run's), and
    under load the teardown of a finished rank sometimes aborted it ("terminate called without an
    active exception", a C++ thread still joinable at exit), failing a job that had finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
