"""What the TRL-trained methods (shortest, dpo) share: the lab problems to sample on, checkpointed training
that resumes after an interruption, and writing the finished model atomically with its card."""

from __future__ import annotations

import json
from pathlib import Path

from l2s.cards import atomic_model_dir, new_card, stable_hash, write_card
from l2s.lab.task import Problem, generate_problems

WORK_DIR = Path("runs") / "distill"


def training_problems(num_problems: int, seed: int) -> list[Problem]:
    """Prompts to sample on: the lab's train split (never the test split the eval harness measures)."""
    return generate_problems("train", num_problems, seed=seed + 101)


def sample_training_problems(recipe) -> tuple[list[Problem], dict]:
    """The training problems and the recipe's k verified samples of each (shared by shortest and dpo)."""
    from distill.sampling import SampleSettings, draw_samples, sampling_summary

    problems = training_problems(recipe.num_problems, recipe.seed)
    settings = SampleSettings(
        k=recipe.k, temperature=recipe.temperature, max_tokens=recipe.max_tokens, seed=recipe.seed
    )
    groups = draw_samples(recipe.model, problems, settings)
    print("samples:", sampling_summary(groups))
    return problems, groups


def common_training_arguments(recipe, work_dir: Path, max_length: int) -> dict:
    """Settings every TRL trainer here takes: CPU, checkpoints every `save_steps` (kept: the last two), loss
    logged every 10 steps, a progress bar, no external reporting."""
    return dict(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=recipe.warmup_steps,
        logging_steps=min(10, recipe.max_steps or 10),  # short runs still log their loss
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=recipe.seed,
        max_length=max_length,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def work_dir_for(out: Path, recipe, data: list) -> Path:
    """Where a run keeps its checkpoints: named by the output, the recipe and the training data, so that only
    the same run resumes from them (a changed recipe or a rebuilt model starts afresh)."""
    return WORK_DIR / f"{out.name}-{stable_hash([recipe.model_dump(), data])[:12]}"


def train_resumably(trainer, work_dir: Path) -> None:
    """Train, resuming from the last complete checkpoint in `work_dir` if an earlier run was interrupted."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = work_dir / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        print(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    (work_dir / "loss.json").write_text(
        json.dumps([{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e])
    )


def save_model(
    trainer, tokenizer, out_dir: Path, method: str, parent: str, recipe: dict, examples: list, **extra
) -> None:
    with atomic_model_dir(out_dir) as temporary:
        trainer.save_model(str(temporary))
        tokenizer.save_pretrained(str(temporary))
        for leftover in ("training_args.bin",):
            (temporary / leftover).unlink(missing_ok=True)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        write_card(
            temporary,
            new_card(
                name=out_dir.name,
                method=method,
                parents=[Path(parent).name],
                recipe=recipe,
                role="short",
                data_hash=stable_hash(examples),
                training={"steps": trainer.state.global_step, "final_loss": losses[-1] if losses else None},
                **extra,
            ),
        )
