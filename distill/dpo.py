"""`l2s distill dpo`: DPO on shortest-vs-longer pairs (k1.5 §2.4, SPEC §3.4), with TRL's `DPOTrainer` and the
long model as the reference.

Chosen: the shortest correct of k samples. Rejected: wrong samples longer than it, and correct samples at
least 1.5× as long. The maximum length is set from the data, so no pair is silently cut.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from distill.lora import peft_config
from distill.sampling import sampling_summary
from distill.selection import dpo_pairs
from distill.training import (
    TrainedRecipe,
    common_training_arguments,
    conversational_keeps_completions,
    longest_prompt,
    sample_training_problems,
    save_model,
    train_resumably,
    training_completion,
    training_prompt,
    work_dir_for,
)
from l2s.distributed import is_main


class DPORecipe(TrainedRecipe):
    long_ratio: float = Field(1.5, ge=1, description="a correct sample this many times as long as chosen is rejected")
    max_pairs_per_problem: int = Field(2, ge=1, description="preference pairs kept per problem")
    beta: float = Field(0.1, gt=0, description="DPO β")


def run(recipe: DPORecipe, out: Path) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model_path = recipe.model_path
    problems, groups = sample_training_problems(recipe)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    conversational = conversational_keeps_completions(tokenizer, recipe, problems, groups)
    pairs, longest = [], 0
    for problem in problems:
        prompt = training_prompt(tokenizer, recipe.prompt.messages(problem.question), conversational)
        for chosen, rejected in dpo_pairs(groups[problem.id], recipe.long_ratio, recipe.max_pairs_per_problem):
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": training_completion(chosen.completion, conversational),
                    "rejected": training_completion(rejected.completion, conversational),
                }
            )
            longest = max(longest, rejected.length, chosen.length)
    if not pairs:
        raise SystemExit("no preference pairs: no problem had a correct sample with a longer alternative")
    if is_main():
        print(f"{len(pairs)} pairs from {len(problems)} problems; longest response {longest} tokens")
    model = AutoModelForCausalLM.from_pretrained(model_path)
    # the reference is the long model; with LoRA, TRL uses the model with its adapter switched off
    reference = None if recipe.lora else AutoModelForCausalLM.from_pretrained(model_path)
    work_dir = work_dir_for(out, recipe, pairs)
    max_length = max(longest_prompt(tokenizer, [p["prompt"] for p in pairs]) + 16, 64) + longest
    arguments = DPOConfig(**common_training_arguments(recipe, work_dir, max_length), beta=recipe.beta)
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=arguments,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
    )
    train_resumably(trainer, work_dir)
    save_model(
        trainer,
        tokenizer,
        out,
        "dpo",
        recipe,
        pairs,
        data={"problems": len(problems), "pairs": len(pairs), **sampling_summary(groups)},
    )
    if is_main():
        print(f"wrote {out}")
    return out
