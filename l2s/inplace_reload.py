"""Load a new checkpoint into a running vLLM engine, leaving it exactly as a fresh engine on that checkpoint.

vLLM's `reload_weights` reloads in place, but on the CPU build the embedding and the LM head keep their weights
*and* a packed copy made at load time (`dispatch_cpu_unquantized_gemm`), which the reload leaves stale: the
reloaded engine then answers differently from a fresh one (greedy answers differed on lab-long -> lab-short).
`InPlaceReload` (mixed into vLLM's worker through `worker_extension_cls`) repacks those layers after the reload,
and `reload_engine_weights` drops the prefix cache, whose KV blocks were computed with the old weights.
tests/test_inplace_reload.py checks the result token for token against a fresh engine.
"""

from __future__ import annotations

from pathlib import Path

WORKER_EXTENSION = "l2s.inplace_reload.InPlaceReload"


class InPlaceReload:
    """Methods added to vLLM's worker (`self` is the worker), called by name through `collective_rpc`."""

    def reload_checkpoint(self, path: str) -> list[str]:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        self.reload_weights(weights_path=path)
        repacked = []
        for name, module in self.model_runner.model.named_modules():
            weight = getattr(module, "weight", None)
            # layers that dispatched to a packed CPU kernel *and* kept their weight: the packed copy is stale
            if hasattr(module, "cpu_linear") and weight is not None and weight.ndim == 2 and weight.numel():
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)
                repacked.append(name)
        return repacked


def reload_engine_weights(engine, checkpoint: str | Path) -> None:
    """Point a `vllm.LLM` opened by `l2s.generation.open_engine` at the weights of `checkpoint` (same architecture)."""
    engine.collective_rpc("reload_checkpoint", args=(str(Path(checkpoint).resolve()),))
    engine.reset_prefix_cache()
