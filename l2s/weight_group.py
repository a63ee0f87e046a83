"""A process group of its own between an RL trainer and a vLLM rollout server's workers, to send the policy's
weights without a shared disk (issue #16) — the pattern of TRL's `trl vllm-serve` (its weight-sync group) and
verl's rollout workers.

The trainer's main process is rank 0 and hosts the group's TCP store; each of the server's workers (one per
tensor-parallel rank) joins as rank 1 + its vLLM rank. The group is independent of both sides' own worlds (the
trainers' accelerate/torchrun group, the engine's): it is made directly from a store, never as the default group.
NCCL between GPUs, gloo between CPUs (what runs and is tested here; NCCL is not: no GPU has been lent).
"""

from __future__ import annotations

from datetime import timedelta

TIMEOUT = timedelta(minutes=10)


def open_group(host: str, port: int, rank: int, world_size: int):
    """Join the group (rank 0 hosts its store at host:port; the constructor returns once every rank has joined)."""
    import torch
    import torch.distributed as dist

    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=TIMEOUT)
    if torch.cuda.is_available():
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, TIMEOUT)


def weight_specs(weights: dict) -> list[list]:
    """What the receivers allocate before each broadcast, in sending order: [name, dtype, shape] per tensor."""
    return [[name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)] for name, tensor in weights.items()]


def send(group, weights: dict) -> None:
    """Broadcast each tensor from rank 0, in `weight_specs` order (from the GPU under NCCL)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for tensor in weights.values():
        group.broadcast(tensor.detach().to(device).contiguous(), 0).wait()


def receive(group, specs: list[list], device) -> list[tuple]:
    """The tensors rank 0 sends, as (name, tensor) pairs (what vLLM's `load_weights` takes)."""
    import torch

    received = []
    for name, dtype, shape in specs:
        tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        group.broadcast(tensor, 0).wait()
        received.append((name, tensor))
    return received
