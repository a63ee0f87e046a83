"""`l2s lab build`: train the embedded default models from scratch on the lab task.

    base  (mixed long / short / no-CoT traces)
     ├── lab-long   fine-tuned on long CoT
     └── lab-short  fine-tuned on no CoT (the recipe's `short.style`)

Both fine-tunes share the base as their ancestor, so merging them means something. Each stage is cached by
its recipe: a model directory whose card carries the same recipe hash is reused, so a second build starts at
once. Every directory is written under a temporary name and renamed when complete (`atomic_model_dir`).
After training, each variant is measured on held-out test problems with the vLLM engine and the figures go
into its `card.json`. Finished builds are also cached outside the checkout by recipe hash (`l2s/lab/cache.py`).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from l2s.atomic import left_by_dead_process
from l2s.cards import atomic_model_dir, new_card, read_card, stable_hash, update_card, write_card
from l2s.jsonl import CorruptFile, read_yaml
from l2s.lab import cache as lab_cache
from l2s.lab.task import Problem, generate_problems, is_correct
from l2s.lab.tokenizer import save_tokenizer, train_tokenizer
from l2s.lab.traces import LongTraceOptions, completion
from l2s.lab.train import TrainSettings, train

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "lab.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(Strict):
    hidden_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(384, gt=0)
    max_position_embeddings: int = Field(1024, gt=0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelShape:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        return self


class Stage(Strict):
    steps: int = Field(gt=0)
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(gt=0)
    warmup_steps: int = Field(50, ge=0)


class BaseStage(Stage):
    # share of each trace style in the base's data
    style_mix: dict[Literal["long", "short", "none"], float] = {"long": 0.75, "none": 0.25}


class ShortStage(Stage):
    style: Literal["short", "none"] = "none"


class LongTraces(Strict):
    plan: float = Field(0.4, ge=0, le=1)
    check: float = Field(0.35, ge=0, le=1)
    again: float = Field(0.35, ge=0, le=1)
    redo: float = Field(0.3, ge=0, le=1)


class AccuracyGate(Strict):
    """A long model that does not solve the task is no start for distilling it. After its steps the stage's
    model is measured greedily on validation problems (never the test split); below `min_accuracy` it trains
    `extra_steps` more at the stage's final learning rate, and again, at most `max_rounds` times. Why: the
    same recipe gave lab seed 0 a lab-long at 99.8-100% and lab seed 1 one at 73.6% (right reasoning, answers
    miscopied; pass@8 99.6%), so RL's results from "another lab build" measured the build, not the recipe."""

    min_accuracy: float = Field(gt=0, le=1)
    validation_problems: int = Field(300, gt=0)
    extra_steps: int = Field(500, gt=0)
    max_rounds: int = Field(3, ge=1)


class LongStage(Stage):
    # The long model's own habits (default: the base's). Above 0.5 they survive greedy decoding, which follows
    # the mode: a long model that checks and redoes only sometimes decodes greedily to its shortest trace.
    traces: LongTraces | None = None
    gate: AccuracyGate | None = None


class Measurement(Strict):
    test_problems: int = Field(500, gt=0)
    samples: int = Field(8, gt=0)
    max_tokens: int = Field(512, gt=0)


class LabRecipe(Strict):
    seed: int = 0
    train_problems: int = Field(18000, gt=0)
    vocab_size: int = Field(512, gt=300)
    model: ModelShape = ModelShape()
    long_traces: LongTraces = LongTraces()
    base: BaseStage
    long: LongStage
    short: ShortStage
    measure: Measurement = Measurement()

    @classmethod
    def load(cls, path: str | Path) -> LabRecipe:
        try:
            return cls.model_validate(read_yaml(path, "lab recipe"))
        except ValidationError as error:
            raise CorruptFile(f"{path}: not a valid lab recipe:\n{error}") from None


def _trace_maker(traces: LongTraces, styles: dict[str, float]):
    options = LongTraceOptions(**traces.model_dump())
    names, weights = list(styles), list(styles.values())

    def make(problem: Problem, rng: random.Random) -> str:
        style = rng.choices(names, weights)[0] if len(names) > 1 else names[0]
        return completion(problem, style, rng, options)

    return make


def _train_stage(
    name: str,
    parent: Path | None,
    out_dir: Path,
    recipe: LabRecipe,
    styles: dict[str, float],
    stage: Stage,
    tokenizer: PreTrainedTokenizerFast,
    problems: list[Problem],
    seed: int,
    traces: LongTraces,
    checkpoint_every: int = 100,
    gate: AccuracyGate | None = None,
) -> Path:
    stage_recipe = {"lab": recipe.model_dump(), "stage": name, "styles": styles}
    parent_hash = (read_card(parent) or {}).get("recipe_hash") if parent else None
    card = read_card(out_dir)
    if card and card.get("recipe_hash") == stable_hash(stage_recipe) and card.get("parent_hash") == parent_hash:
        _remove_training_states(out_dir)  # (a kill between publishing the stage and deleting its state left it)
        print(f"{name}: cached at {out_dir}")
        return out_dir
    # a kill mid-stage resumes from here; keyed on the stage's recipe and its parent, so only the same stage does
    states = f".{out_dir.name}-{stable_hash([stage_recipe, parent_hash])[:12]}"  # (extra rounds add "-extraN")
    checkpoint = out_dir.with_name(f"{states}.train-state.pt")
    _remove_training_states(out_dir, keep=states)
    if parent is None:
        shape = recipe.model
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=shape.hidden_size,
            num_hidden_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_key_value_heads=shape.num_attention_heads,
            intermediate_size=shape.intermediate_size,
            max_position_embeddings=shape.max_position_embeddings,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    else:
        model = LlamaForCausalLM.from_pretrained(parent, dtype=torch.float32)
    settings = TrainSettings(
        steps=stage.steps,
        batch_size=stage.batch_size,
        learning_rate=stage.learning_rate,
        warmup_steps=stage.warmup_steps,
        checkpoint_every=checkpoint_every,
    )
    started = time.time()
    maker = _trace_maker(traces, styles)
    losses = train(
        model, tokenizer, problems, maker, settings, seed, description=name, checkpoint=checkpoint,
        keep_final=gate is not None,  # (a kill while measuring or training on resumes without redoing the steps)
    )  # fmt: skip
    gate_rounds = None
    if gate is not None:
        gate_rounds = _train_to_gate(
            name, model, tokenizer, problems, maker, settings, gate, recipe, seed, checkpoint, losses
        )
    seconds = time.time() - started
    with atomic_model_dir(out_dir) as temporary:
        model.save_pretrained(temporary)
        save_tokenizer(tokenizer, temporary)
        (temporary / "training_loss.json").write_text(json.dumps([round(loss, 5) for loss in losses]))
        parent_card = read_card(parent) if parent else None
        card = new_card(
            name=out_dir.name,
            method="lab-sft",
            parents=[parent.name] if parent else [],
            recipe=stage_recipe,
            role={"lab-base": "base", "lab-long": "long", "lab-short": "short"}.get(out_dir.name, name),
            parent_hash=parent_card.get("recipe_hash") if parent_card else None,
            parameters=sum(p.numel() for p in model.parameters()),
            seed=seed,
            data={"task": "lab", "train_problems": len(problems), "styles": styles},
            training={
                "steps": len(losses),
                "seconds": round(seconds, 1),
                "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                **({"gate": {**gate.model_dump(), "rounds": gate_rounds}} if gate else {}),
            },
        )
        write_card(temporary, card)
    _remove_training_states(out_dir)
    return out_dir


def _train_to_gate(
    name: str,
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    problems: list[Problem],
    maker,
    settings: TrainSettings,
    gate: AccuracyGate,
    recipe: LabRecipe,
    seed: int,
    checkpoint: Path,
    losses: list[float],
) -> list[dict]:
    """Measure the stage's model on validation problems and train it on until it passes `gate` (extends
    `losses`); returns each round's step count and accuracy. Below the gate after its last round, the model
    is kept with a warning, and the card says so."""
    validation = generate_problems("validation", gate.validation_problems, seed=recipe.seed)
    rounds: list[dict] = []
    for extra_round in range(gate.max_rounds + 1):
        if extra_round:
            extra_settings = replace(
                settings,
                steps=gate.extra_steps,
                learning_rate=settings.learning_rate * settings.min_learning_rate_ratio,  # where the stage ended
                warmup_steps=0,
                min_learning_rate_ratio=1.0,  # constant
            )
            extra = checkpoint.with_name(checkpoint.name.replace(".train-state", f"-extra{extra_round}.train-state"))
            losses += train(
                model, tokenizer, problems, maker, extra_settings, seed + 100 * extra_round,
                description=f"{name} (extra round {extra_round})", checkpoint=extra, keep_final=True,
            )  # fmt: skip
        accuracy = _validation_accuracy(model, tokenizer, validation, recipe, checkpoint)
        rounds.append({"steps": len(losses), "validation_accuracy": accuracy, "passed": accuracy >= gate.min_accuracy})
        print(f"{name}: {accuracy:.1%} greedy on {len(validation)} validation problems after {len(losses)} steps "
              f"(gate {gate.min_accuracy:.0%})")  # fmt: skip
        if accuracy >= gate.min_accuracy:
            return rounds
    print(f"WARNING: {name} is below its gate ({gate.min_accuracy:.0%}) after {gate.max_rounds} extra rounds; kept")
    return rounds


def _validation_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, problems: list[Problem], recipe: LabRecipe,
    checkpoint: Path,
) -> float:  # fmt: skip
    """Greedy accuracy with the vLLM engine, as every lab figure is measured: from a scratch copy of the model."""
    scratch = checkpoint.with_name(checkpoint.name.split(".train-state")[0] + ".gate")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        model.save_pretrained(scratch)
        save_tokenizer(tokenizer, scratch)
        return measure(scratch, problems, recipe, sample=False)["accuracy"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remove_training_states(out_dir: Path, keep: str | None = None) -> None:
    """Delete a stage's saved training states but those named `keep...` (another recipe's, or a finished
    stage's), and what killed writers of them left (`..NAME-KEY.train-state.tmp-PID-THREAD.pt` of a process
    that is gone, a gate's scratch model)."""
    for path in out_dir.parent.glob(f".*{out_dir.name}-*.train-state*"):
        writer = path.name.partition(".tmp-")[2].split("-")[0]  # a temporary's; none for a saved state
        if writer:
            stale = left_by_dead_process(writer)
        else:
            stale = not (keep and path.name.startswith(keep))
        if stale:
            path.unlink(missing_ok=True)
    if keep is None:
        for scratch in out_dir.parent.glob(f".{out_dir.name}-*.gate"):
            shutil.rmtree(scratch, ignore_errors=True)


def measure(model_dir: Path, problems: list[Problem], recipe: LabRecipe, sample: bool) -> dict:
    """Greedy accuracy and token counts on `problems`; with `sample`, also k samples at temperature 1."""
    from l2s.generation import close_engine, generate, open_engine

    engine = open_engine(model_dir)
    try:
        questions = [problem.question for problem in problems]
        greedy = [samples[0] for samples in generate(engine, questions, max_tokens=recipe.measure.max_tokens)]
        correct = [is_correct(s.answer_text, p) for s, p in zip(greedy, problems)]
        report = {
            "test_problems": len(problems),
            "accuracy": round(sum(correct) / len(correct), 4),
            "mean_reasoning_tokens": round(statistics.mean(s.reasoning_tokens for s in greedy), 2),
            "mean_answer_tokens": round(statistics.mean(s.answer_tokens for s in greedy), 2),
            "accuracy_by_level": {
                str(level): round(statistics.mean(c for c, p in zip(correct, problems) if p.level == level), 4)
                for level in sorted({p.level for p in problems})
            },
        }
        if sample:
            k = recipe.measure.samples
            groups = generate(
                engine,
                questions,
                num_samples=k,
                temperature=1.0,
                max_tokens=recipe.measure.max_tokens,
                seed=recipe.seed,
            )
            covered, shortest_ratio, lengths = 0, [], []
            for samples, problem in zip(groups, problems):
                sample_lengths = [s.reasoning_tokens + s.answer_tokens for s in samples]
                lengths.extend(sample_lengths)
                correct_lengths = [n for s, n in zip(samples, sample_lengths) if is_correct(s.answer_text, problem)]
                if correct_lengths:
                    covered += 1
                    shortest_ratio.append(min(correct_lengths) / statistics.mean(sample_lengths))
            report["sampling"] = {
                "k": k,
                "temperature": 1.0,
                "pass_at_k": round(covered / len(problems), 4),
                "sample_accuracy": round(
                    sum(is_correct(s.answer_text, p) for g, p in zip(groups, problems) for s in g)
                    / (k * len(problems)),
                    4,
                ),
                "mean_sample_tokens": round(statistics.mean(lengths), 2),
                "shortest_correct_over_mean": round(statistics.mean(shortest_ratio), 4) if shortest_ratio else None,
            }
        return report
    finally:
        close_engine(engine)


def build(
    out: Path,
    recipe_path: Path = DEFAULT_RECIPE,
    force_measure: bool = False,
    seed: int | None = None,
    checkpoint_every: int = 100,
) -> dict[str, dict]:
    recipe = LabRecipe.load(recipe_path)
    if seed is not None:
        recipe = recipe.model_copy(update={"seed": seed})
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    restored = lab_cache.restore(recipe.model_dump(), out)
    if restored:
        print(f"copied {', '.join(restored)} from {lab_cache.cache_dir(recipe.model_dump())}")
    problems = generate_problems("train", recipe.train_problems, seed=recipe.seed)
    test = generate_problems("test", recipe.measure.test_problems, seed=recipe.seed)
    rng = random.Random(recipe.seed)
    maker = _trace_maker(recipe.long_traces, {"long": 1, "short": 1, "none": 1})
    tokenizer = train_tokenizer(
        [p.question for p in problems[:3000]] + [maker(p, rng) for p in problems[:3000] for _ in range(2)],
        vocab_size=recipe.vocab_size,
    )
    base = _train_stage(
        "lab-base",
        None,
        out / "lab-base",
        recipe,
        dict(recipe.base.style_mix),
        recipe.base,
        tokenizer,
        problems,
        recipe.seed,
        recipe.long_traces,
        checkpoint_every,
    )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(base)  # the base's own, also when it came from the cache
    long = _train_stage(
        "lab-long",
        base,
        out / "lab-long",
        recipe,
        {"long": 1.0},
        recipe.long,
        tokenizer,
        problems,
        recipe.seed + 1,
        recipe.long.traces or recipe.long_traces,
        checkpoint_every,
        gate=recipe.long.gate,
    )
    short = _train_stage(
        "lab-short",
        base,
        out / "lab-short",
        recipe,
        {recipe.short.style: 1.0},
        recipe.short,
        tokenizer,
        problems,
        recipe.seed + 2,
        recipe.long_traces,
        checkpoint_every,
    )
    results = {}
    for model_dir, sample in ((long, True), (short, False)):
        card = read_card(model_dir) or {}
        if "evaluation" not in card or force_measure:
            card = update_card(model_dir, evaluation=measure(model_dir, test, recipe, sample))
        results[model_dir.name] = card["evaluation"]
    lab_cache.store(recipe.model_dump(), out)
    print(f"lab build finished in {time.time() - started:.0f} s")
    print(json.dumps(results, indent=2))
    return results
