"""Offline generation on the vLLM engine: k samples per prompt, reasoning budgets, token counts.

This is the one place outside `server/` that touches vLLM. The lab build, the eval harness's offline mode and
every distill method generate through it, so a budget means the same thing everywhere: vLLM's own
`thinking_token_budget`, which forces `</think>` when the reasoning reaches the cap.

On a GPU (and under a multi-process launcher) engines start worker processes with spawn: call `open_engine` from
code that runs under `if __name__ == "__main__":` (the `l2s` command does). On the CPU they run in-process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from l2s.adapters import adapter_base, adapter_rank, adapter_target_modules, is_adapter, lora_request, vllm_max_rank
from l2s.distributed import launched_processes, one_process_engine
from l2s.formats import ReasoningFormat, detect_format, split_completion
from l2s.inplace_reload import WORKER_EXTENSION


class EngineSettings(BaseModel):
    """How an offline vLLM engine is sized: from the model and the hardware unless set (recipes' `engine:`,
    `l2s eval --dtype/--max-model-len/...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str = Field("auto", description="auto: the model's own on a GPU (bf16 for most), float32 on the CPU")
    max_model_len: int | None = Field(None, ge=16, description="prompt + completion tokens (default: the model's)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory vLLM may take")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs to shard the model over")
    kv_cache_gib: int = Field(1, ge=1, description="CPU only: KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    max_num_seqs: int = Field(256, ge=1, description="sequences decoded together")
    seed: int = 0


def on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def engine_dtype(dtype: str) -> str:
    """The dtype to hand vLLM: on the CPU, "auto" would let it cast a float32 checkpoint (the lab's) to 16 bits."""
    return "float32" if dtype == "auto" and not on_gpu() else dtype


def model_max_length(model_dir: Path) -> int | None:
    """The context length a model's config declares (the field differs by architecture)."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = {**config.get("text_config", {}), **config}
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: list[int]
    reasoning_text: str
    answer_text: str
    reasoning_tokens: int
    answer_tokens: int
    closed: bool  # the reasoning ended with the end marker
    finish_reason: str | None
    logprob: float | None = None  # with `logprobs=True`: log π of the sampled tokens (eos included), per the engine


def open_engine(
    model_dir: str | Path,
    settings: EngineSettings = EngineSettings(),
    max_lora_rank: int | None = None,
    lora_target_modules: list[str] | None = None,
):
    """A `vllm.LLM` for `model_dir` (a directory or a hub id) with the model's reasoning markers configured (so
    budgets work); a model without reasoning markers gets none. For a LoRA adapter: its base's engine, and
    `generate` applies the adapter. `max_lora_rank`: room for adapters of that rank, applied by `use_adapter`
    (RL with LoRA), on the modules named by `lora_target_modules` (default: every module LoRA supports)."""
    from transformers import AutoTokenizer

    from l2s.models import resolve_model

    model_dir = resolve_model(model_dir)
    adapter = None
    if is_adapter(model_dir):  # the base's engine, with the adapter applied to every request
        adapter, model_dir = model_dir, resolve_model(adapter_base(model_dir))
        max_lora_rank = max(max_lora_rank or 1, adapter_rank(adapter))
        own = adapter_target_modules([adapter])  # (with the caller's: vLLM drops weights of modules left out)
        lora_target_modules = None if own is None else sorted({*own, *(lora_target_modules or [])})
    lora_settings = {}
    if max_lora_rank:  # (LoRA layers only on the adapted modules: less work, and compiled on the CPU)
        lora_settings = {
            "enable_lora": True,
            "max_lora_rank": vllm_max_rank([max_lora_rank]),
            "lora_target_modules": lora_target_modules,
        }
    fmt = detect_format(AutoTokenizer.from_pretrained(model_dir))
    gpu = on_gpu()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    cpu_engine_environment()
    from vllm import LLM  # imported here: importing vLLM is slow and most commands do not need it

    max_model_len = settings.max_model_len or model_max_length(model_dir)
    if gpu:
        hardware = {"gpu_memory_utilization": settings.gpu_memory_utilization}
        hardware["tensor_parallel_size"] = settings.tensor_parallel_size
    else:
        hardware = cpu_scheduling(max_model_len or 8192)
    # under `accelerate launch`: this engine is one process's own, not the trainers'; alone on the CPU: in-process
    with one_process_engine(), in_process_on_cpu():
        engine = LLM(
            model=str(model_dir),
            dtype=engine_dtype(settings.dtype),
            max_model_len=max_model_len,
            max_num_seqs=settings.max_num_seqs,
            seed=settings.seed,
            reasoning_config=reasoning_config(fmt),
            enable_prefix_caching=True,
            worker_extension_cls=WORKER_EXTENSION,  # lets RL load each new policy in place (l2s/inplace_reload.py)
            **lora_settings,
            **hardware,
        )
    engine._l2s_format = fmt  # what `engine_format` hands out: detected once, before the engine was built
    engine._l2s_adapter = None
    if adapter:
        use_adapter(engine, adapter)
    return engine


def use_adapter(engine, adapter: str | Path, version: int = 1) -> None:
    """Apply LoRA adapter `adapter` to everything the engine generates from now on (engines opened with room for
    it). A new `version` makes vLLM load the directory afresh: RL writes each iteration's adapter to a new one."""
    engine._l2s_adapter = lora_request(f"{Path(adapter).name}-{version}", adapter, int_id=version)


def reasoning_config(fmt: ReasoningFormat) -> dict | None:
    """vLLM's reasoning config (what `thinking_token_budget` counts and the `</think>` it forces), or None."""
    if not fmt.reasons:
        return None
    return {"reasoning_start_str": fmt.markers.start, "reasoning_end_str": fmt.markers.end}


def engine_format(engine) -> ReasoningFormat:
    """The reasoning format of the model an offline engine serves (detected once per engine)."""
    fmt = getattr(engine, "_l2s_format", None)
    if fmt is None:
        fmt = detect_format(engine.get_tokenizer())
        engine._l2s_format = fmt
    return fmt


def cpu_engine_environment() -> None:
    """VLLM_USE_AOT_COMPILE=0 on the CPU, set before an engine is made (a user's own value wins): vllm-cpu 0.32
    cannot load the AOT-compiled model it saved ("'function' object has no attribute 'finalize_loading'") and
    compiles it afresh at every start (~10 s here); without AOT it uses torch's compile cache, which loads
    (engine warm-up 13 s -> 5 s)."""
    if not on_gpu():
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


@contextmanager
def in_process_on_cpu() -> Iterator[None]:
    """While an offline engine is built on the CPU: VLLM_ENABLE_V1_MULTIPROCESSING=0, so its engine core and worker
    run in this process instead of two spawned ones that each import vLLM again (`make bench-engine-start`, 2 cores:
    `l2s eval --offline` of two problems 67 s -> 30 s, and 42 samples/s instead of 30: no three busy processes
    contending for two cores). vLLM reads it only while building, and it is removed after, so no later child
    process (a launcher's trainers, a server) inherits it. Not under a multi-process launcher (an engine in a
    trainer's process would join the trainers' torch.distributed world), not on a GPU, and not when the environment
    already says."""
    if on_gpu() or launched_processes() or "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ:
        yield
        return
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)


def cpu_scheduling(max_model_len: int) -> dict:
    """Engine arguments that keep seeded sampling alive on vLLM's CPU build.

    vllm-cpu 0.32 rewinds a request's random generator when a step only prefilled part of its prompt
    (`gen.set_offset`), which CPU generators do not support: the engine dies ("CPU Generator does not use
    offset") as soon as a seeded request's prefill is split. Without chunked prefill no prompt is split.
    On CUDA the defaults stay.
    """
    if on_gpu():
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}


def check_template_keeps(tokenizer, messages: list[dict]) -> None:
    """Refuse a prompt the model's chat template would silently cut: a template without a system role (the lab's)
    renders a system prompt as nothing."""
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    for message in messages:
        if message["content"] and message["content"] not in rendered:
            raise ValueError(
                f"the chat template of this model drops {message['role']} messages: "
                f"{message['content'][:60]!r} would never reach it (put it in the instruction instead)"
            )


def chat_prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """A question (sent as the user's message) or whole chat messages, through the model's chat template."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def generate(
    engine,
    prompts: Sequence[str | list[dict]],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 512,
    thinking_token_budget: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[list[Sample]]:
    """`num_samples` completions for each prompt (a question, or chat messages from a `PromptPolicy`), as chat
    requests through the model's template."""
    tokenizer = engine.get_tokenizer()
    if prompts and not isinstance(prompts[0], str):
        check_template_keeps(tokenizer, prompts[0])
    return generate_from_ids(
        engine,
        [chat_prompt_ids(tokenizer, prompt) for prompt in prompts],
        num_samples=num_samples,
        temperature=temperature,
        max_tokens=max_tokens,
        thinking_token_budget=thinking_token_budget,
        seed=seed,
        progress=progress,
    )


def generate_from_ids(
    engine,
    prompts: Sequence[list[int]],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_tokens: int | Sequence[int] = 512,
    thinking_token_budget: int | None = None,
    seed: int | Sequence[int] = 0,
    progress: bool = True,
    logprobs: bool = False,
) -> list[list[Sample]]:
    """Completions of prompts given as token ids (a chat prompt, or one with a partial completion appended to
    continue it). `max_tokens` and `seed` may differ per prompt: the same prompt with the same seed gives the
    same sample, so independent samples of one prompt need `num_samples` or a seed each."""
    from vllm import SamplingParams

    tokenizer = engine.get_tokenizer()
    fmt = engine_format(engine)
    budget = thinking_token_budget if fmt.reasons and thinking_token_budget not in (None, -1) else None
    caps = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
    params = [
        SamplingParams(
            n=num_samples,
            temperature=temperature,
            max_tokens=cap,
            seed=prompt_seed,
            thinking_token_budget=budget,
            skip_special_tokens=True,
            logprobs=0 if logprobs else None,  # 0: only the sampled token's
        )
        for cap, prompt_seed in zip(caps, seeds)
    ]
    outputs = engine.generate(
        [{"prompt_token_ids": list(ids)} for ids in prompts],
        params,
        use_tqdm=progress,
        lora_request=getattr(engine, "_l2s_adapter", None),  # (set by `open_engine` for an adapter)
    )
    results = []
    for output in outputs:
        samples = []
        for choice in output.outputs:
            ids = list(choice.token_ids)
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids = ids[:-1]
            split = split_completion(fmt, choice.text, ids)
            samples.append(
                Sample(
                    text=choice.text,
                    token_ids=ids,
                    reasoning_text=split.reasoning,
                    answer_text=split.answer,
                    reasoning_tokens=split.reasoning_tokens,
                    answer_tokens=split.answer_tokens,
                    closed=split.closed,
                    finish_reason=choice.finish_reason,
                    logprob=_sampled_logprob(choice) if logprobs else None,
                )
            )
        results.append(samples)
    return results


def _sampled_logprob(choice) -> float:
    """The sum of the engine's log-probabilities of the tokens it sampled."""
    return sum(step[token].logprob for token, step in zip(choice.token_ids, choice.logprobs))


def close_engine(engine) -> None:
    """Stop the engine now: its worker processes, or in-process its KV cache and torch.distributed group (left to
    `__del__` a multi-process engine prints a traceback at exit). The caller drops its reference after, so that
    the model's weights go too."""
    shutdown = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if shutdown is not None and hasattr(shutdown, "shutdown"):
        shutdown.shutdown()
    elif hasattr(engine, "close"):  # (a rollout server's client: the server keeps running)
        engine.close()
