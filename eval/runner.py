"""Run an evaluation: every model × condition (budget or effort) × problem × sample, through an
OpenAI-compatible API (the official `openai` client, concurrently, streamed so time-to-first-token is measured)
or offline on the vLLM engine (`l2s.generation`). Both write the same sample records to `samples.jsonl`, one
line per completion as it finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from l2s.generation import EngineSettings
from l2s.jsonl import CorruptFile, read_log
from l2s.models import weights_version
from l2s.reasoning import split_text
from l2s.tasks import PromptPolicy, TaskProblem


@dataclass(frozen=True)
class Condition:
    """A budget (None = unbudgeted) or an effort level under which a model is evaluated."""

    budget: int | None = None
    effort: str | None = None

    @property
    def label(self) -> str:
        if self.effort is not None:
            return f"effort:{self.effort}"
        return "none" if self.budget is None else str(self.budget)


@dataclass
class EvalSettings:
    models: list[str]
    problems: list[TaskProblem]
    conditions: list[Condition]
    samples: int = 1
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    concurrency: int = 16
    base_url: str | None = None
    api_key: str = "unused"
    prompt: PromptPolicy = field(default_factory=PromptPolicy)
    engine: EngineSettings = field(default_factory=EngineSettings)
    extra: dict = field(default_factory=dict)


def model_name(model: str) -> str:
    """A model's name in results: a directory's basename (offline), or the served name (API)."""
    path = Path(model)
    return path.name if path.exists() else model


def model_version(model: str) -> str | None:
    """Which weights a model directory holds now (its weight files' names, sizes and times): samples of an
    older model under the same name are never reused. None for a served model (API mode cannot tell)."""
    return weights_version(model) if Path(model).is_dir() else None


def sample_key(record: dict) -> tuple:
    return (record["model"], record.get("model_version"), record["condition"], record["problem_id"], record["sample"])


def sample_key_of(model: str, version: str | None, condition: Condition, problem: TaskProblem, index: int) -> tuple:
    return (model_name(model), version, condition.label, problem.id, index)


def load_done(samples_path: Path) -> dict[tuple, dict]:
    """The samples already in the log (a line cut off by a kill is dropped from the file: that sample runs again;
    a corrupt line elsewhere is an error naming it)."""
    done = {}
    for number, record in enumerate(read_log(samples_path), start=1):
        try:
            done[sample_key(record)] = record
        except KeyError as error:
            raise CorruptFile(
                f"{samples_path}:{number}: not an eval sample (no {error}); delete the file to redo it"
            ) from None
    return done


def _todo(settings: EvalSettings, model: str, condition: Condition, done: dict) -> list[tuple[TaskProblem, int]]:
    version = model_version(model)  # once: it reads the model directory
    return [
        (problem, index)
        for problem in settings.problems
        for index in range(settings.samples)
        if sample_key_of(model, version, condition, problem, index) not in done
    ]


def _record(
    model: str,
    version: str | None,
    condition: Condition,
    problem: TaskProblem,
    index: int,
    reasoning: str,
    answer: str,
    reasoning_tokens: int,
    answer_tokens: int,
    **timing,
) -> dict:
    return {
        "model": model_name(model),
        "model_version": version,
        "condition": condition.label,
        "budget": condition.budget,
        "effort": condition.effort,
        "problem_id": problem.id,
        "level": problem.level,
        "sample": index,
        "correct": problem.is_correct(answer),
        "reasoning_tokens": reasoning_tokens,
        "answer_tokens": answer_tokens,
        "answer": answer,
        "reasoning": reasoning,
        **timing,
    }


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_offline(settings: EvalSettings, samples_path: Path) -> None:
    """Generate on the vLLM engine directly, one engine per model, batches of problems at a time."""
    from l2s.generation import close_engine, generate, open_engine

    done = load_done(samples_path)
    total = len(settings.models) * len(settings.conditions) * len(settings.problems) * settings.samples
    progress = tqdm(total=total, initial=len(done), desc="eval (offline)", unit="sample", dynamic_ncols=True)
    with samples_path.open("a") as out:
        for model in settings.models:
            pending = {condition: _todo(settings, model, condition, done) for condition in settings.conditions}
            if not any(pending.values()):
                continue
            engine, version = open_engine(model, settings.engine), model_version(model)
            try:
                for condition, todo in pending.items():
                    problems = list(dict.fromkeys(problem for problem, _ in todo))
                    for batch in _chunks(problems, 128):
                        groups = generate(
                            engine,
                            [settings.prompt.messages(p.question) for p in batch],
                            num_samples=settings.samples,
                            temperature=settings.temperature,
                            max_tokens=settings.max_tokens,
                            thinking_token_budget=condition.budget,
                            seed=settings.seed,
                            progress=False,
                        )
                        for problem, group in zip(batch, groups):
                            for index, sample in enumerate(group):
                                if sample_key_of(model, version, condition, problem, index) in done:
                                    continue
                                record = _record(
                                    model,
                                    version,
                                    condition,
                                    problem,
                                    index,
                                    sample.reasoning_text,
                                    sample.answer_text,
                                    sample.reasoning_tokens,
                                    sample.answer_tokens,
                                )
                                out.write(json.dumps(record) + "\n")
                                progress.update(1)
                        out.flush()
            finally:
                close_engine(engine)
                del engine  # (an in-process engine's weights go with the last reference, before the next model's)
    progress.close()


async def _one_api_request(
    client, settings: EvalSettings, model: str, condition: Condition, problem: TaskProblem, index: int
) -> dict:
    extra_body = dict(settings.extra)
    kwargs = {}
    if condition.budget is not None:
        extra_body["thinking_token_budget"] = condition.budget
    if condition.effort is not None:
        kwargs["reasoning_effort"] = condition.effort
    started = time.perf_counter()
    ttft = ttfa = None
    reasoning, answer, usage = "", "", None
    stream = await client.chat.completions.create(
        model=model,
        messages=settings.prompt.messages(problem.question),
        stream=True,
        stream_options={"include_usage": True},
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        seed=settings.seed + index,
        extra_body=extra_body,
        **kwargs,
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            piece = extra.get("reasoning_content") or extra.get("reasoning") or ""
            if (piece or choice.delta.content) and ttft is None:
                ttft = time.perf_counter() - started
            if choice.delta.content and ttfa is None:
                ttfa = time.perf_counter() - started
            reasoning += piece
            answer += choice.delta.content or ""
    latency = time.perf_counter() - started
    if not reasoning and "</think>" in answer:  # a server without a reasoning parser: split it here
        split = split_text(answer)
        reasoning, answer = split.reasoning, split.answer
    details = getattr(usage, "completion_tokens_details", None) if usage else None
    reasoning_tokens = getattr(details, "reasoning_tokens", None) if details else None
    if reasoning_tokens is None:
        raise RuntimeError("the server did not report usage.completion_tokens_details.reasoning_tokens")
    return _record(
        model,
        model_version(model),
        condition,
        problem,
        index,
        reasoning,
        answer,
        reasoning_tokens,
        usage.completion_tokens - reasoning_tokens,
        ttft=ttft,
        ttfa=ttfa,
        latency=latency,
    )


async def _run_api(settings: EvalSettings, samples_path: Path) -> None:
    from openai import AsyncOpenAI

    done = load_done(samples_path)
    work = [
        (model, condition, problem, index)
        for model in settings.models
        for condition in settings.conditions
        for problem, index in _todo(settings, model, condition, done)
    ]
    total = len(settings.models) * len(settings.conditions) * len(settings.problems) * settings.samples
    progress = tqdm(total=total, initial=total - len(work), desc="eval (api)", unit="sample", dynamic_ncols=True)
    client = AsyncOpenAI(base_url=settings.base_url, api_key=settings.api_key, max_retries=3, timeout=600)
    limit = asyncio.Semaphore(settings.concurrency)
    with samples_path.open("a") as out:

        async def run(item):
            async with limit:
                record = await _one_api_request(client, settings, *item)
            out.write(json.dumps(record) + "\n")
            out.flush()
            progress.update(1)

        await asyncio.gather(*(run(item) for item in work))
    await client.close()
    progress.close()


def run_api(settings: EvalSettings, samples_path: Path) -> None:
    asyncio.run(_run_api(settings, samples_path))
