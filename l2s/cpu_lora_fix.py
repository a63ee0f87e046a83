"""A fix for vLLM's CPU LoRA kernels, loaded into every vLLM process as a general plugin (pyproject's
`vllm.general_plugins` entry point).

vLLM marks the tokens of requests without an adapter with LoRA index -1. Its CUDA kernels skip them; the
PyTorch ops its CPU build uses (`vllm/lora/ops/torch_ops/lora_ops.py`) gather `weights[-1]` instead — the last
adapter slot — so a base-model request batched beside adapter requests silently gets an adapter applied
(vllm-project/vllm#48421, open as of vLLM 0.32). Found by tests/test_lora.py: lab-long answered like the DPO
adapter whenever both had requests in flight. Until the fix lands, these wrappers make -1 mean "no adapter":
the shrink (x·A) is zero for those tokens, and the expand (·B) leaves their output as it was. For tokens with
an adapter the ops run unchanged.
"""

from __future__ import annotations

import functools
import os


def _shrink_skipping_base_tokens(shrink):
    @functools.wraps(shrink)
    def wrapper(inputs, lora_weights, output, indices, *args, **kwargs):
        base = indices < 0
        shrink(inputs, lora_weights, output, indices.clamp(min=0), *args, **kwargs)
        if base.any():
            output[base] = 0
        return output

    wrapper._l2s_fixed = True
    return wrapper


def _expand_skipping_base_tokens(expand):
    @functools.wraps(expand)
    def wrapper(inputs, lora_weights, output, indices, *args, **kwargs):
        base = indices < 0
        if not base.any():
            return expand(inputs, lora_weights, output, indices, *args, **kwargs)
        if output.shape[0] != base.shape[0]:  # (no call in vLLM 0.32 has this shape: refuse to guess)
            raise RuntimeError(f"l2s cpu_lora_fix: {output.shape[0]} output rows for {base.shape[0]} token indices")
        kept = output[base].clone()
        expand(inputs, lora_weights, output, indices.clamp(min=0), *args, **kwargs)
        output[base] = kept
        return output

    wrapper._l2s_fixed = True
    return wrapper


PLUGIN = "l2s_cpu_lora_fix"  # its name in pyproject.toml's `vllm.general_plugins`


def check_cpu_lora_fix() -> None:
    """Refuse to serve LoRA on the CPU without the fix: vLLM loads it only if the package was installed with its
    entry point (`pip install -e .`) and `VLLM_PLUGINS`, when set, names it."""
    from importlib.metadata import entry_points

    if PLUGIN not in {entry.name for entry in entry_points(group="vllm.general_plugins")}:
        raise ValueError(
            f"LoRA on the CPU needs the {PLUGIN} vLLM plugin, which is not installed: run `pip install -e .` "
            "(or `make setup`) again"
        )
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN not in allowed.split(","):
        raise ValueError(f"LoRA on the CPU needs the {PLUGIN} vLLM plugin: add it to VLLM_PLUGINS ({allowed!r})")


def register() -> None:
    """Wrap the CPU ops where they are defined and where the CPU punica wrapper imported them (idempotent)."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:  # a vLLM without these modules: nothing to fix
        return
    wrappers = {
        "bgmv_shrink": _shrink_skipping_base_tokens,
        "bgmv_expand": _expand_skipping_base_tokens,
        "bgmv_expand_slice": _expand_skipping_base_tokens,
    }
    for name, wrap in wrappers.items():
        for module in (lora_ops, punica_cpu):
            op = getattr(module, name, None)
            if op is not None and not getattr(op, "_l2s_fixed", False):
                setattr(module, name, wrap(op))
    try:  # (vLLM's plugin loader does not catch: a failure here would stop every engine from starting)
        from l2s import cpu_lora_compiled
    except ImportError:  # a vLLM without the CPU punica wrapper: LoRA stays uncompiled there
        return
    cpu_lora_compiled.register()
