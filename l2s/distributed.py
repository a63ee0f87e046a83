"""Runs under `accelerate launch` (or torchrun): which process this is, what only the main one does, and how
the processes share out work and put the results back together.

Training is spread over processes by accelerate (DDP, FSDP, DeepSpeed; through TRL's trainers for shortest and
dpo); writing the model directory, its card and the logs happens once, on the main process. `rank`, `world_size`
and `is_main` read the launcher's environment (RANK, WORLD_SIZE) without starting anything, so they work before
the process group is set up, and in a plain single-process run (rank 0 of 1), where every helper here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

# what torchrun / accelerate launch set for each process; vLLM reads some of them as its own
LAUNCHER_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def launched_processes() -> bool:
    """Whether a launcher (accelerate, torchrun) started this process as one of a group."""
    return "WORLD_SIZE" in os.environ or "RANK" in os.environ


@contextmanager
def one_process_engine() -> Iterator[None]:
    """While a vLLM engine starts in one process of a multi-process run: hide the launcher's variables, so that the
    engine sets up its own one-process world instead of joining (or colliding with) the trainers' one."""
    launched = {name: os.environ[name] for name in LAUNCHER_VARIABLES if name in os.environ}
    if not launched:
        yield
        return
    changes: dict[str, str | None] = {name: None for name in launched}
    # a forked engine process would inherit the trainers' process group and take it for its own
    changes["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    local_world = int(launched.get("LOCAL_WORLD_SIZE", "1"))
    if "LOCAL_RANK" in launched and local_world > 1:  # the engine uses this process's GPU, not GPU 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(n) for n in range(local_world)]
        changes["CUDA_VISIBLE_DEVICES"] = devices[int(launched["LOCAL_RANK"]) % len(devices)]
    saved = {name: os.environ.get(name) for name in changes}
    _set_environment(changes)
    try:
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# --- work shared out over the processes (the process group is up: accelerate's Accelerator started it) -----------


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: every world_size-th, from its rank on."""
    return list(items[rank() :: world_size()])


def gather_shards(mine: list[T], total: int) -> list[T]:
    """The inverse of `shard`: every process's share of a list of `total` items, back in the list's order, on every
    process."""
    if world_size() == 1:
        return mine
    parts = all_gather(mine)
    whole: list = [None] * total
    for index, part in enumerate(parts):
        whole[index :: world_size()] = part
    return whole


def sharded(function: Callable[[list[T]], list], items: Sequence[T]) -> list:
    """`function(items)`, computed in shares (each process on its `shard`, `function` mapping items one to one) and
    put back together on every process."""
    mine = shard(items)
    return gather_shards(function(mine) if mine else [], len(items))


def all_gather(value) -> list:
    """`value` from every process, by rank (any picklable value)."""
    if world_size() == 1:
        return [value]
    import torch.distributed as dist

    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    """Wait until every process is here (after the main one wrote what the others read)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()
