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
        self.reload_weights(weights_path=path)
        return self._repack_cpu_layers()

    def worker_rank(self) -> int:
        return self.rank

    def join_weight_group(self, host: str, port: str, world_size: str) -> int:
        """Join the trainer's weight group (`l2s/weight_group.py`) as rank 1 + this worker's rank. (Arguments come
        as strings: vLLM's HTTP `/collective_rpc` passes only serialized ones.)"""
        from l2s.weight_group import open_group

        self.l2s_weight_group = open_group(host, int(port), 1 + self.rank, int(world_size))
        return 1 + self.rank

    def receive_weights(self, specs: str) -> list[str]:
        """Load the weights the trainer broadcasts over the weight group (`specs`: JSON, what `weight_specs` gives),
        in place, as `reload_checkpoint` loads a checkpoint's."""
        import json

        from l2s.weight_group import receive

        device = next(self.model_runner.model.parameters()).device
        weights = receive(self.l2s_weight_group, json.loads(specs), device)
        self.reload_weights(weights_iterator=iter(weights))
        return self._repack_cpu_layers()

    def _repack_cpu_layers(self) -> list[str]:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

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
