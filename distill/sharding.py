"""RL's policy sharded with FSDP (torch's FSDP2, `fully_shard`) under `accelerate launch --use_fsdp`.

RL's training loop is its own (micro-batches, weighted shares, the OPMD loss), so instead of handing the model to
accelerate's `prepare` it shards the policy with the engine accelerate itself uses for `fsdp_version: 2`: every
decoder layer, then the whole model, each process keeping 1/N of every weight, gradient and AdamW moment. The same
call runs on GPUs (NCCL) and on this CPU (gloo) — accelerate only applies its FSDP config on accelerators, so on a
CPU the request is read from the launcher's environment (`ACCELERATE_USE_FSDP`), as on a GPU.

Checkpoints stay whole: every process helps gather the weights and AdamW's moments, the main process writes them in
the one-process format (the optimizer's moments keyed by parameter order), so a run resumes at any number of
processes, sharded or not.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

# accelerate's FSDP settings that RL does not apply (its own loop decides these), refused rather than ignored
UNSUPPORTED = {
    "FSDP_OFFLOAD_PARAMS": "offloading the weights to the CPU",
    "FSDP_ACTIVATION_CHECKPOINTING": "FSDP's activation checkpointing (the recipe's gradient_checkpointing does it)",
}


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch --use_fsdp`, or `distributed_type: FSDP` in a config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_fsdp_settings() -> None:
    for variable, what in UNSUPPORTED.items():
        if os.environ.get(variable, "false").lower() == "true":
            raise SystemExit(f"distill rl under FSDP does not do {what}: drop it from the accelerate config")


def shard_policy(model):
    """Shard `model` in place: each decoder layer (the classes transformers keeps whole, `_no_split_modules`), then
    the rest (embeddings, norm and LM head, tied or not) as one unit. FULL_SHARD (the default) gathers a layer's
    weights for each forward and frees them after; `fsdp_reshard_after_forward: false` (SHARD_GRAD_OP) keeps them.

    The main process's weights (and buffers) go to every process first: under accelerate's default
    `fsdp_cpu_ram_efficient_loading`, transformers loads the checkpoint on each machine's first process only and
    zeros elsewhere, expecting FSDP's `sync_module_states` to broadcast them (FSDP2 has no such option)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)

    base = getattr(model, "get_base_model", lambda: model)()  # (a LoRA policy: peft wraps the transformers model)
    layer_classes = set(getattr(base, "_no_split_modules", None) or [])
    if not layer_classes:
        raise SystemExit(f"distill rl under FSDP: {type(base).__name__} names no decoder layer (_no_split_modules)")
    reshard = reshard_after_forward()
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


def reshard_after_forward() -> bool:
    """FSDP2's `fsdp_reshard_after_forward` (true: FULL_SHARD), or an FSDP1 config's sharding strategy mapped onto
    it: FULL_SHARD frees the gathered weights after each forward, SHARD_GRAD_OP keeps them; the others
    (NO_SHARD, HYBRID_*) have no FSDP2 equivalent here and are refused."""
    if os.environ.get("FSDP_VERSION", "1") == "2":
        return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0")
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    mapped = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}
    if strategy not in mapped:
        raise SystemExit(
            f"distill rl under FSDP: sharding strategy {strategy} is not supported (FULL_SHARD, SHARD_GRAD_OP)"
        )
    return mapped[strategy]


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync(model, enabled: bool):
    """Under DDP, reduce the gradients of this backward across processes (`enabled`) or accumulate them locally
    (`no_sync`) until the minibatch's last micro-batch. FSDP reduces every micro-batch's gradients into their
    shards (without the reduction it would hold whole, unsharded gradients until the last one). A no-op on one
    process."""
    from torch.nn.parallel import DistributedDataParallel

    if not enabled and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def full_weights(model) -> dict | None:
    """The policy's whole state dict on the main process (None on the others); every process must call it. A weight
    tied to another (an LM head tied to the embeddings) appears once, under its first name, as `save_pretrained`
    writes it from an unsharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from distill.lora import one_name_per_weight

    # (frozen weights — a LoRA policy's base — are the start model's, never written: not gathered either)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return one_name_per_weight(model, get_model_state_dict(model, options=options)) or None


def full_optimizer_state(model, optimizer) -> dict | None:
    """AdamW's whole state on the main process in `optimizer.state_dict()`'s form (moments keyed by the trainable
    parameters' order), None on the others; every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:  # never stepped: nothing to gather (and torch's gathering would take a step to find out)
        return optimizer.state_dict()
    by_name = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not by_name.get("state"):
        return None
    index, groups = 0, []
    state = {}
    for group in by_name["param_groups"]:
        numbers = list(range(index, index + len(group["params"])))
        state.update({number: by_name["state"][name] for number, name in zip(numbers, group["params"])})
        groups.append({**group, "params": numbers})
        index += len(group["params"])
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model, optimizer, saved: dict) -> None:
    """Load a whole optimizer state (one-process form, read by every process) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    if not saved["state"]:  # saved before its first step: only the settings
        optimizer.load_state_dict(saved)
        return

    names = [name for group in get_optimizer_state_dict(model, optimizer)["param_groups"] for name in group["params"]]
    by_name = {
        "state": {names[number]: moments for number, moments in saved["state"].items()},
        "param_groups": [],
    }
    start = 0
    for group in saved["param_groups"]:
        by_name["param_groups"].append({**group, "params": names[start : start + len(group["params"])]})
        start += len(group["params"])
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
