"""`l2s distill shortest`: shortest rejection sampling (k1.5 §2.4, SPEC §3.3).

Sample k responses per problem from the long model, keep the shortest correct one (problems with none
correct are dropped), and fine-tune the long model on those with TRL's `SFTTrainer`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from distill.recipe import Recipe
from distill.sampling import sampling_summary
from distill.selection import shortest_correct
from distill.training import (
    common_training_arguments,
    sample_training_problems,
    save_model,
    train_resumably,
    work_dir_for,
)


class ShortestRecipe(Recipe):
    model: str
    k: int = Field(8, ge=1)
    num_problems: int = Field(2000, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_tokens: int = Field(768, ge=1)
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    save_steps: int = Field(100, ge=1)
    seed: int = 0


def chat_example(question: str, completion: str) -> dict:
    """A conversational prompt-completion example (TRL applies the model's chat template)."""
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": completion}],
    }


def run(recipe: ShortestRecipe, out: Path) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    problems, groups = sample_training_problems(recipe)
    examples, lengths = [], []
    for problem in problems:
        chosen = shortest_correct(groups[problem.id])
        if chosen is not None:
            examples.append(chat_example(problem.question, chosen.completion))
            lengths.append(chosen.length)
    if not examples:
        raise SystemExit("no problem had a correct sample: nothing to learn from")
    print(
        f"shortest correct: {len(examples)} of {len(problems)} problems, mean length "
        f"{sum(lengths) / len(lengths):.1f} tokens"
    )
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    model = AutoModelForCausalLM.from_pretrained(recipe.model)
    work_dir = work_dir_for(out, recipe, examples)
    # the longest example plus the prompt and template, so nothing is cut (never TRL's default)
    max_length = max(lengths) + 64
    arguments = SFTConfig(**common_training_arguments(recipe, work_dir, max_length), completion_only_loss=True)
    trainer = SFTTrainer(
        model=model, args=arguments, train_dataset=Dataset.from_list(examples), processing_class=tokenizer
    )
    train_resumably(trainer, work_dir)
    save_model(
        trainer,
        tokenizer,
        out,
        "shortest-rejection-sft",
        recipe.model,
        recipe.model_dump(),
        examples,
        data={
            "problems": len(problems),
            "examples": len(examples),
            "mean_length": sum(lengths) / len(lengths),
            **sampling_summary(groups),
        },
    )
    print(f"wrote {out}")
    return out
