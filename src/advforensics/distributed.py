"""Work across processes launched by torchrun: torch.distributed, gloo on CPUs and NCCL on GPUs.

torchrun (or SLURM around it) starts one process per rank and sets RANK, WORLD_SIZE, LOCAL_RANK and
the rendezvous address in each one's environment; `start` joins them into one process group. A
command that supports ranks splits its work with `Ranks.share` (a fixed split) or `Ranks.take`
(on demand, through torchrun's key-value store) and meets the others at collectives
(`barrier`, `broadcast`, `all_gather`, `all_sum`). Without torchrun (or with one process), `current`
is the single rank 0 of 1 and every collective is the identity, so library code has one path.

A rank that fails exits non-zero; torchrun then stops the others and the run fails. What each
command leaves behind resumes (see attribution.corpus_generation and models.training).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: how long a rank waits at a collective for the others (a rank's unit of work can take minutes)
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes of one run: rank `rank` of `world_size`."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes shared files (manifests, checkpoints, reports) and prints."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world_size-th, from position `rank` (a fixed, deterministic split)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any JSON-like object), on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum of `values` over the ranks (as float64), on every rank."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)  # CPU tensors travel over gloo
        dist.all_reduce(tensor)
        return [float(v) for v in tensor]


    def take(self, items: Sequence[T]) -> Iterator[T]:
        """`items` dealt out on demand: each rank takes the next one nobody has taken yet (units of
        uneven cost then keep every rank busy to the end). Every rank must call it, in the same order,
        with the same items; one process takes them all, in order."""
        if not self.distributed:
            yield from items
            return
        import secrets

        import torch.distributed as dist

        key = f"advforensics/take/{self.broadcast(secrets.token_hex(8))}"  # one counter per call
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=COLLECTIVE_TIMEOUT)  # torchrun's store, which every rank reaches
        while (index := store.add(key, 1) - 1) < len(items):
            yield items[index]


SINGLE = Ranks()


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def start() -> Ranks:
    """Join the process group torchrun set up (once per process); the single rank without torchrun.

    The backend is NCCL when this process sees a GPU (each rank then takes GPU LOCAL_RANK), else gloo.
    """
    if not launched():
        return SINGLE
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            backend = "cpu:gloo,cuda:nccl"  # objects and CPU tensors over gloo, GPU tensors over NCCL
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return current()


def current() -> Ranks:
    """This process's ranks: from the joined process group, else the single rank 0 of 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE


def stop() -> None:
    """Leave the process group (at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["COLLECTIVE_TIMEOUT", "Ranks", "SINGLE", "current", "launched", "start", "stop"]
