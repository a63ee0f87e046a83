"""RL's policy trained by DeepSpeed ZeRO-2 or ZeRO-3 under `accelerate launch --use_deepspeed` (or a config with
`distributed_type: DEEPSPEED`).

RL keeps its own loop (micro-batches, weighted shares, the OPMD loss) and hands DeepSpeed only what it owns: the
gradients' reduction, AdamW's step over its partitions and, under ZeRO-3, the weights' partitioning. accelerate
builds the engine from the launcher's settings; RL then fixes the settings its loop decides itself (one optimiser
step per minibatch of any number of micro-batches: `managed_gradient_accumulation` off, no clipping, its own
AdamW) and refuses the ones it does not do (offload, fp16/bf16, DeepSpeed's own optimiser or scheduler).

Three things differ from DDP and FSDP (found on 2 CPU processes, docs/deepspeed-on-cpu/README.md):

- the engine steps (`engine.step()`: reduce, AdamW over the partitions, zero the gradients); the optimiser
  accelerate returns is a no-op wrapper;
- without a GPU, accelerate's own view of the processes is wrong (every process thinks it is the only one), so
  ranks, barriers and gathers stay `l2s.distributed`'s (torch.distributed's), and the Accelerator is made with
  `cpu=False` (`cpu=True` would silently give DDP);
- checkpoints stay in the one-process format, so a run resumes at any number of processes under any engine:
  AdamW's moments are gathered per parameter (`safe_get_full_optimizer_state`) and scattered back on a resume into
  the partitions (whose lazily made state is created first); under ZeRO-3 the weights are gathered too.
"""

from __future__ import annotations

import os

# settings of the launcher's DeepSpeed config that RL's loop does not apply: refused rather than ignored
UNSUPPORTED_SECTIONS = {
    "optimizer": "DeepSpeed's own optimiser (RL steps its AdamW)",
    "scheduler": "a learning-rate scheduler (RL's learning rate is constant)",
}


def deepspeed_requested() -> bool:
    """Whether the launcher asked for DeepSpeed (`--use_deepspeed`, or `distributed_type: DEEPSPEED`)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_plugin():
    """accelerate's DeepSpeed plugin from the launcher's settings, with what RL's loop decides set."""
    from accelerate import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()  # (reads the launcher's flags or config file)
    config = plugin.deepspeed_config
    for section, what in UNSUPPORTED_SECTIONS.items():
        if section in config:
            raise SystemExit(f"distill rl under DeepSpeed does not use {what}: drop `{section}` from the config")
    for precision in ("fp16", "bf16"):
        if str(config.get(precision, {}).get("enabled", False)).lower() == "true":
            raise SystemExit(
                f"distill rl under DeepSpeed trains in float32 (on GPUs its forward already runs in bf16): "
                f"drop {precision} from the config"
            )
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") not in (2, 3):  # (the ones tested; 0 and 1 keep whole gradients on every process)
        raise SystemExit(f"distill rl under DeepSpeed runs ZeRO-2 or ZeRO-3, not stage {zero.get('stage')}")
    for offload in ("offload_optimizer", "offload_param"):
        if str((zero.get(offload) or {}).get("device", "none")).lower() not in ("none", "auto"):
            raise SystemExit(f"distill rl under DeepSpeed does not {offload.replace('_', ' ')}: set its device to none")
    config.update(
        # RL's minibatches are split into as many micro-batches as each needs: one optimiser step per minibatch,
        # taken by RL's `engine.step()`, not every N backward passes
        train_micro_batch_size_per_gpu=1,  # (bookkeeping only: there is no dataloader)
        gradient_accumulation_steps=1,
        managed_gradient_accumulation=False,
        gradient_clipping=0.0,
        zero_allow_untested_optimizer=True,  # (torch's AdamW)
    )
    # accelerate fills "auto" with ITS process count, 1 on a CPU (see the module's docstring): DeepSpeed derives it
    config.pop("train_batch_size", None)
    if zero.get("stage") == 3:  # the weights to checkpoint are gathered from their partitions
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return plugin


def zero_stage(engine) -> int:
    return engine.zero_optimization_stage()


def is_deepspeed(model) -> bool:
    if not deepspeed_requested():
        return False
    from deepspeed import DeepSpeedEngine

    return isinstance(model, DeepSpeedEngine)


def trainable_parameters(engine) -> list:
    """The parameters AdamW steps, in the one-process optimiser's order (its state is keyed by this order)."""
    return [parameter for parameter in engine.module.parameters() if parameter.requires_grad]


def full_weights(engine) -> dict | None:
    """Under ZeRO-3 the whole state dict (gathered from the partitions, on every process; every process must
    call it); under ZeRO-2 None: every process's module holds the whole weights after each step."""
    if zero_stage(engine) < 3:
        return None
    import deepspeed

    from distill.lora import one_name_per_weight

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        whole = one_name_per_weight(module, module.state_dict())
        return {name: tensor.detach().clone().cpu() for name, tensor in whole.items()}


def full_optimizer_state(engine, learning_rate: float) -> dict:
    """AdamW's whole state in the one-process `optimizer.state_dict()` form (moments keyed by the trainable
    parameters' order), gathered from the partitions on every process; every process must call it."""
    import torch
    from deepspeed.utils import safe_get_full_optimizer_state

    parameters = trainable_parameters(engine)
    # the settings as a one-process AdamW over these parameters states them
    groups = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1)) for _ in parameters], lr=learning_rate,
                               weight_decay=0.0).state_dict()["param_groups"]  # fmt: skip
    steps = {float(state["step"]) for state in engine.optimizer.optimizer.state.values() if "step" in state}
    if not steps:  # never stepped
        return {"state": {}, "param_groups": groups}
    (step,) = steps
    state = {}
    for number, parameter in enumerate(parameters):
        shape = parameter.ds_shape if hasattr(parameter, "ds_shape") else parameter.shape  # (ZeRO-3: flat)
        state[number] = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq"):
            state[number][key] = safe_get_full_optimizer_state(parameter, key).detach().clone().view(shape).cpu()
    return {"state": state, "param_groups": groups}


def load_optimizer_state(engine, saved: dict) -> None:
    """Load a whole one-process AdamW state (read by every process) into the engine's partitions."""
    import torch
    from deepspeed.utils import safe_set_full_optimizer_state

    if not saved["state"]:  # saved before its first step: a fresh AdamW, as the engine's is
        return
    (step,) = {float(state["step"]) for state in saved["state"].values()}
    base = engine.optimizer.optimizer  # torch's AdamW over DeepSpeed's flat float32 partitions
    stage = zero_stage(engine)
    # AdamW makes its state at its first step: make it now, zeros, then fill each parameter's fragment of it
    flats = engine.optimizer.fp32_partitioned_groups_flat if stage == 3 else [
        flat for group in base.param_groups for flat in group["params"]]  # fmt: skip
    for flat in flats:
        base.state[flat] = {"step": torch.tensor(step), "exp_avg": torch.zeros_like(flat),
                            "exp_avg_sq": torch.zeros_like(flat)}  # fmt: skip
    if stage < 3:  # ZeRO-2 links each parameter to its fragment of the state at the first step: link them now
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    for number, parameter in enumerate(trainable_parameters(engine)):
        for key in ("exp_avg", "exp_avg_sq"):
            value = saved["state"][number][key]
            safe_set_full_optimizer_state(parameter, value.reshape(-1) if stage == 3 else value, key)


def reset_optimizer_state(engine) -> None:
    """A fresh AdamW, in place (step and moments zero): the engine's partitions keep views of the state's tensors,
    so the state is zeroed rather than replaced."""
    for state in engine.optimizer.optimizer.state.values():
        for tensor in state.values():
            tensor.zero_()


def load_whole_models_again() -> None:
    """After training: while accelerate's ZeRO-3 config is set, transformers loads every model partitioned (under
    `zero.Init`, a collective of all processes); the main process alone then loads the kept checkpoint to publish
    it, whole."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
