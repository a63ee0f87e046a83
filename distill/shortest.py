"""`l2s distill shortest`: shortest rejection sampling (k1.5 §2.4, SPEC §3.3).

Sample k responses per problem from the long model, keep the shortest correct one (problems with none
correct are dropped), and fine-tune the long model on those with TRL's `SFTTrainer`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from distill.lora import peft_config
from distill.sampling import sampling_summary
from distill.selection import shortest_correct
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


class ShortestRecipe(TrainedRecipe):
    k: int = Field(8, ge=1, description="samples per problem")
    epochs: float = Field(2.0, gt=0, description="training epochs")
    learning_rate: float = Field(3e-4, gt=0, description="peak learning rate (cosine schedule)")


def run(recipe: ShortestRecipe, out: Path) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_path = recipe.model_path
    problems, groups = sample_training_problems(recipe)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    conversational = conversational_keeps_completions(tokenizer, recipe, problems, groups)
    examples, lengths = [], []
    for problem in problems:
        chosen = shortest_correct(groups[problem.id])
        if chosen is not None:
            examples.append(
                {
                    "prompt": training_prompt(tokenizer, recipe.prompt.messages(problem.question), conversational),
                    "completion": training_completion(chosen.completion, conversational),
                }
            )
            lengths.append(chosen.length)
    if not examples:
        raise SystemExit("no problem had a correct sample: nothing to learn from")
    if is_main():
        print(
            f"shortest correct: {len(examples)} of {len(problems)} problems, mean length "
            f"{sum(lengths) / len(lengths):.1f} tokens"
        )
    model = AutoModelForCausalLM.from_pretrained(model_path)
    work_dir = work_dir_for(out, recipe, examples)
    # the longest prompt and example plus the template's closing tokens, so nothing is cut (never TRL's default)
    max_length = max(longest_prompt(tokenizer, [e["prompt"] for e in examples]) + 16, 64) + max(lengths)
    arguments = SFTConfig(**common_training_arguments(recipe, work_dir, max_length), completion_only_loss=True)
    trainer = SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_config(recipe),
    )
    train_resumably(trainer, work_dir)
    save_model(
        trainer,
        tokenizer,
        out,
        "shortest-rejection-sft",
        recipe,
        examples,
        data={
            "problems": len(problems),
            "examples": len(examples),
            "mean_length": sum(lengths) / len(lengths),
            **sampling_summary(groups),
        },
    )
    if is_main():
        print(f"wrote {out}")
    return out
