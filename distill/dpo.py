"""`l2s distill dpo`: DPO on shortest-vs-longer pairs (k1.5 §2.4, SPEC §3.4), with TRL's `DPOTrainer` and the
long model as the reference.

Chosen: the shortest correct of k samples. Rejected: wrong samples longer than it, and correct samples at
least 1.5× as long. The maximum length is set from the data, so no pair is silently cut.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from distill.recipe import Recipe
from distill.sampling import sampling_summary
from distill.selection import dpo_pairs
from distill.training import (
    common_training_arguments,
    sample_training_problems,
    save_model,
    train_resumably,
    work_dir_for,
)


class DPORecipe(Recipe):
    model: str
    k: int = Field(8, ge=2)
    num_problems: int = Field(2000, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_tokens: int = Field(768, ge=1)
    long_ratio: float = Field(1.5, ge=1, description="a correct sample this many times as long as chosen is rejected")
    max_pairs_per_problem: int = Field(2, ge=1)
    beta: float = Field(0.1, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    save_steps: int = Field(100, ge=1)
    seed: int = 0


def run(recipe: DPORecipe, out: Path) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    problems, groups = sample_training_problems(recipe)
    pairs, longest = [], 0
    for problem in problems:
        for chosen, rejected in dpo_pairs(groups[problem.id], recipe.long_ratio, recipe.max_pairs_per_problem):
            pairs.append(
                {
                    "prompt": [{"role": "user", "content": problem.question}],
                    "chosen": [{"role": "assistant", "content": chosen.completion}],
                    "rejected": [{"role": "assistant", "content": rejected.completion}],
                }
            )
            longest = max(longest, rejected.length, chosen.length)
    if not pairs:
        raise SystemExit("no preference pairs: no problem had a correct sample with a longer alternative")
    print(f"{len(pairs)} pairs from {len(problems)} problems; longest response {longest} tokens")
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    model = AutoModelForCausalLM.from_pretrained(recipe.model)
    reference = AutoModelForCausalLM.from_pretrained(recipe.model)
    work_dir = work_dir_for(out, recipe, pairs)
    arguments = DPOConfig(**common_training_arguments(recipe, work_dir, longest + 64), beta=recipe.beta)
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=arguments,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    train_resumably(trainer, work_dir)
    save_model(
        trainer,
        tokenizer,
        out,
        "dpo",
        recipe.model,
        recipe.model_dump(),
        pairs,
        data={"problems": len(problems), "pairs": len(pairs), **sampling_summary(groups)},
    )
    print(f"wrote {out}")
    return out
