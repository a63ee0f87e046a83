"""LoRA on vLLM's CPU build without giving up torch.compile (loaded by the `l2s_cpu_lora_fix` vLLM plugin).

vLLM's CPU platform turns compilation off for the whole model as soon as LoRA is enabled
(`vllm/platforms/cpu.py`: `if vllm_config.lora_config is not None: compilation_config.mode = NONE`), and for a
small model op overhead is most of a decoding step: one engine serving three adapters decoded at 0.73× the
throughput of four separate compiled engines (results/bench-lora/). The reason is in the CPU punica wrapper: it
picks its prefill or decode path with Python flags and per-batch Python ints (`is_prefill`, `no_lora`,
`indices_len`), which a graph traced once (the CPU build's `DYNAMO_TRACE_ONCE` mode, no guards) would freeze at
their warm-up values.

`CompiledPunicaWrapperCPU` applies the linear layers' adapters with no such branch — one path for prefill and
decode, sized by the tokens in the batch, the per-token adapter slots read from the buffer vLLM refreshes in place
each step, tokens without an adapter (slot -1) masked to zero — so the traced graph is right for every batch.
Compilation is kept on only where that covers every LoRA layer: the engine's `lora_target_modules` must be set
and name linear layers only (embedding and LM-head adapters still go through vLLM's own, uncompiled path). The
server and offline engines set it from their adapters' `adapter_config.json` (`l2s/adapters.py`).
`enforce_eager` still turns compilation off, as everywhere in vLLM.
"""

from __future__ import annotations

import functools

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

# target-module names vLLM's models give embeddings and LM heads, whose LoRA layers are not linear layers (should a
# model name one otherwise, `add_lora_embedding`/`add_lora_logits` below refuse to be compiled rather than be wrong)
NOT_LINEAR = {
    *("embed_tokens", "tok_embeddings", "embedding", "embeddings", "token_embedding", "word_embeddings", "wte"),
    *("embed_in", "lm_head", "head", "output", "output_layer", "embed_out"),
}


class CompiledPunicaWrapperCPU(PunicaWrapperCPU):
    """PunicaWrapperCPU with branch-free linear-layer ops (see the module docstring)."""

    def _slots(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's adapter slot (0 where it has none) and whether it has one, for the first `tokens`."""
        indices = self._token_lora_indices[:tokens]
        return indices.clamp(min=0), (indices >= 0).unsqueeze(-1)

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs):
        """y[i] = (x · A_i[slot]ᵀ) · scale for each slice i, 0 for tokens without an adapter."""
        x = x.view(-1, x.shape[-1])
        slots, has_adapter = self._slots(x.shape[0])
        for index, weights in enumerate(lora_a_stacked):  # weights: [slots, 1, rank, in]
            every = torch.einsum("ti,lri->tlr", x.to(weights.dtype), weights[:, 0])  # each token through every slot
            rank = every.shape[-1]
            mine = every.gather(1, slots.view(-1, 1, 1).expand(-1, 1, rank)).squeeze(1)
            y[index].copy_(torch.where(has_adapter, mine * scale, 0.0).to(y[index].dtype))
        return y

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True, **kwargs):
        """y[:, slice i] += x[i] · B_i[slot]ᵀ (x[i] is already 0 for tokens without an adapter)."""
        y_2d = y.view(-1, y.shape[-1])
        slots, _ = self._slots(y_2d.shape[0])
        offset = offset_start
        for index, (weights, size) in enumerate(zip(lora_b_stacked, output_slices)):  # weights: [slots, 1, out, r]
            every = torch.einsum("tr,lor->tlo", x[index].to(weights.dtype), weights[:, 0])
            width = every.shape[-1]
            mine = every.gather(1, slots.view(-1, 1, 1).expand(-1, 1, width)).squeeze(1)[:, :size]
            if add_inputs:
                y_2d[:, offset : offset + size] += mine.to(y_2d.dtype)
            else:
                y_2d[:, offset : offset + size] = mine.to(y_2d.dtype)
            offset += size
        return y

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        x = x.view(-1, x.shape[-1])
        if buffer is None:
            rank = lora_b_stacked[0].size(-1)
            buffer = tuple(torch.zeros((x.shape[0], rank), dtype=torch.float32, device=x.device) for _ in output_slices)
        self.add_shrink(buffer, x, lora_a_stacked, scale)
        return self.add_expand(y, buffer, lora_b_stacked, output_slices, add_inputs=True)

    def add_lora_embedding(self, *args, **kwargs):
        _refuse_if_compiling("an embedding")
        return super().add_lora_embedding(*args, **kwargs)

    def add_lora_logits(self, *args, **kwargs):
        _refuse_if_compiling("an LM head")
        return super().add_lora_logits(*args, **kwargs)


def _refuse_if_compiling(layer: str) -> None:
    """vLLM's own embedding and LM-head LoRA ops branch on per-batch Python state: traced once, they would be wrong
    for every later batch. Reached while compiling only if `NOT_LINEAR` misses a model's name for such a layer."""
    if torch.compiler.is_compiling():
        raise RuntimeError(
            f"l2s cpu_lora_compiled: LoRA on {layer} cannot be compiled on the CPU; leave it out of the adapters' "
            "target modules or start the engine with enforce_eager"
        )


def only_linear(target_modules: list[str] | None) -> bool:
    """Whether LoRA is restricted to linear layers (what the compiled wrapper covers)."""
    return bool(target_modules) and not NOT_LINEAR.intersection(target_modules)


def keep_compilation_with_lora(check_and_update_config):
    """Wrap CpuPlatform.check_and_update_config: where LoRA is restricted to linear layers, keep the compilation
    mode the CPU platform picked for the model, which the original then turns off because of LoRA."""

    @functools.wraps(check_and_update_config)
    def wrapper(cls, vllm_config):
        from vllm.config import CompilationMode

        lora = vllm_config.lora_config
        wanted = vllm_config.compilation_config.mode == CompilationMode.VLLM_COMPILE  # (not enforce_eager)
        check_and_update_config(vllm_config)
        if lora is not None and wanted and only_linear(lora.target_modules):
            vllm_config.compilation_config.mode = CompilationMode.DYNAMO_TRACE_ONCE

    wrapper._l2s_fixed = True
    return classmethod(wrapper)


def register() -> None:
    """Use the compiled wrapper on vLLM's CPU platform and keep compilation for linear-only LoRA (idempotent)."""
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.__dict__["check_and_update_config"].__func__
    if getattr(original, "_l2s_fixed", False):
        return
    CpuPlatform.check_and_update_config = keep_compilation_with_lora(original.__get__(CpuPlatform))
    CpuPlatform.get_punica_wrapper = classmethod(lambda cls: f"{__name__}.CompiledPunicaWrapperCPU")
