"""The shared sampling of the distill methods: k samples per problem from a model on the vLLM engine (offline),
each verified, with its reasoning and answer token counts, cached to JSONL so an interrupted run resumes.

`shortest`, `dpo` and `rl` all draw through `draw_samples`; nothing else in the project samples on its own.
The cache file is named by a hash of the model's identity and the sampling settings, so a changed model or
setting never reuses stale samples.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from l2s.atomic import file_lock
from l2s.cards import read_card, stable_hash
from l2s.generation import EngineSettings
from l2s.home import runs_dir
from l2s.jsonl import CorruptFile, read_log
from l2s.tasks import PromptPolicy, TaskProblem


@dataclass(frozen=True)
class SampleSettings:
    k: int = 8
    temperature: float = 1.0
    max_tokens: int = 768
    seed: int = 0
    thinking_token_budget: int | None = None


@dataclass(frozen=True)
class Sample:
    problem_id: str
    sample: int
    completion: str  # the whole output, markers included (what SFT/DPO train on)
    token_ids: list[int]
    reasoning_tokens: int
    answer_tokens: int
    correct: bool
    finished: bool  # ended on its own (not cut by max_tokens)

    @property
    def length(self) -> int:
        """len_j of SPEC §3: tokens of reasoning and answer together."""
        return self.reasoning_tokens + self.answer_tokens


def cache_path(
    model_dir: str | Path,
    problems: list[TaskProblem],
    settings: SampleSettings,
    cache_dir: Path | None = None,
    prompt: PromptPolicy = PromptPolicy(),
    engine_settings: EngineSettings = EngineSettings(),
) -> Path:
    card = read_card(model_dir) or {}
    identity = {
        "model": str(Path(model_dir).resolve()),
        "recipe_hash": card.get("recipe_hash"),
        "created": card.get("created"),
        "problems": [p.id for p in problems],
        **asdict(settings),
        "seeds": "per-problem-id",  # (samples drawn before seeds were per problem are not reused)
        # only what is set, so caches from before these settings still hold
        **{key: value for key, value in prompt.model_dump().items() if value},
        **{f"engine_{k}": v for k, v in engine_settings.model_dump(exclude_defaults=True).items() if k != "seed"},
    }
    return (cache_dir or runs_dir("samples")) / f"{Path(model_dir).name}-{stable_hash(identity)}.jsonl"


def _load(path: Path) -> dict[str, list[Sample]]:
    """The cached samples by problem, in sample order (a line cut off by a kill is dropped from the file and
    redone; a group a kill left short is drawn again whole, and the redrawn samples replace its earlier ones)."""
    groups: dict[str, dict[int, Sample]] = {}
    for number, record in enumerate(read_log(path), start=1):
        try:
            sample = Sample(**record)
        except TypeError:
            raise CorruptFile(f"{path}:{number}: not a sample record; delete the file to redo its sampling") from None
        groups.setdefault(sample.problem_id, {})[sample.sample] = sample
    return {pid: [group[index] for index in sorted(group)] for pid, group in groups.items()}


def problem_seed(seed: int, problem_id: str) -> int:
    """The seed of one problem's samples: from the run's seed and the problem's id, never from its position in
    the work left, so a resumed run draws exactly what an uninterrupted one would."""
    return int(stable_hash([seed, problem_id]), 16) % 2**31


def draw_samples(
    model_dir: str | Path,
    problems: list[TaskProblem],
    settings: SampleSettings,
    cache_dir: Path | None = None,
    engine=None,
    batch_size: int = 256,
    prompt: PromptPolicy = PromptPolicy(),
    engine_settings: EngineSettings = EngineSettings(),
) -> dict[str, list[Sample]]:
    """k verified samples per problem, by problem id; cached, and resumed from the cache after an interruption.

    Pass an open `engine` to reuse it."""
    path = cache_path(model_dir, problems, settings, cache_dir, prompt, engine_settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(f".{path.name}.lock")):  # runs sharing a cache take turns (shortest, dpo)
        return _draw(path, model_dir, problems, settings, engine, batch_size, prompt, engine_settings)


def _draw(path, model_dir, problems, settings, engine, batch_size, prompt, engine_settings) -> dict:
    from l2s.generation import close_engine, generate, open_engine

    groups = {pid: samples for pid, samples in _load(path).items() if len(samples) == settings.k}
    todo = [p for p in problems if p.id not in groups]
    if todo:
        own_engine = engine is None
        engine = engine or open_engine(model_dir, engine_settings)
        try:
            with path.open("a") as out:
                for start in range(0, len(todo), batch_size):
                    batch = todo[start : start + batch_size]
                    outputs = generate(
                        engine,
                        [prompt.messages(p.question) for p in batch],
                        num_samples=settings.k,
                        temperature=settings.temperature,
                        max_tokens=settings.max_tokens,
                        thinking_token_budget=settings.thinking_token_budget,
                        seed=[problem_seed(settings.seed, p.id) for p in batch],  # the same on any resume
                    )
                    for problem, group in zip(batch, outputs):
                        groups[problem.id] = [
                            Sample(
                                problem_id=problem.id,
                                sample=index,
                                completion=s.text,
                                token_ids=s.token_ids,
                                reasoning_tokens=s.reasoning_tokens,
                                answer_tokens=s.answer_tokens,
                                correct=s.closed and problem.is_correct(s.answer_text),
                                finished=s.finish_reason == "stop",
                            )
                            for index, s in enumerate(group)
                        ]
                        out.write("".join(json.dumps(asdict(s)) + "\n" for s in groups[problem.id]))
                    out.flush()
        finally:
            if own_engine:
                close_engine(engine)
    return {p.id: groups[p.id] for p in problems}


def sampling_summary(groups: dict[str, list[Sample]]) -> dict:
    samples = [s for group in groups.values() for s in group]
    return {
        "problems": len(groups),
        "samples": len(samples),
        "sample_accuracy": sum(s.correct for s in samples) / max(1, len(samples)),
        "problems_with_a_correct_sample": sum(any(s.correct for s in g) for g in groups.values()) / max(1, len(groups)),
        "mean_length": sum(s.length for s in samples) / max(1, len(samples)),
    }
