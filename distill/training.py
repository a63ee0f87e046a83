"""What the TRL-trained methods (shortest, dpo) share: the problems to sample on, checkpointed training that
resumes after an interruption, and writing the finished model atomically with its card.

Under `accelerate launch` (any config: DDP, FSDP, DeepSpeed) every process runs this same code: the samples are
drawn once (the first process to take the sample cache's lock draws them on the vLLM engine, the others then
read them from the cache), TRL's trainer spreads the training over the processes, and only the main process
writes the work directory's lock and log, the model directory and its card. `batch_size` is per process.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path

from pydantic import Field

from distill.lora import LoraRecipe, save_weights
from distill.recipe import TaskRecipe
from distill.reporting import LOGGING_FIELDS, ReportingRecipe
from l2s.atomic import write_text_atomic
from l2s.cards import atomic_model_dir, new_card, stable_hash, write_card
from l2s.distributed import is_main, world_size
from l2s.home import exclusive, run_dir_for
from l2s.tasks import TaskProblem, load_task

logger = logging.getLogger("l2s")


class TrainedRecipe(LoraRecipe, ReportingRecipe, TaskRecipe):
    """The settings shortest and dpo share: what to sample (k per problem) and how TRL trains on it (all the
    weights, or a LoRA adapter)."""

    k: int = Field(8, ge=2, description="samples per problem")
    num_problems: int = Field(2000, ge=1, description="training problems to sample on (the first N of the task)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    max_tokens: int = Field(768, ge=1, description="sampling cap per response")
    epochs: float = Field(1.0, gt=0, description="training epochs")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    batch_size: int = Field(16, ge=1, description="examples per forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1, description="forward passes per optimiser step")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (memory)")
    learning_rate: float = Field(1e-4, gt=0, description="peak learning rate (cosine schedule)")
    warmup_steps: int = Field(10, ge=0, description="learning-rate warm-up steps")
    save_steps: int = Field(100, ge=1, description="checkpoint every this many steps (resumable)")
    seed: int = Field(0, description="seeds the problems, the sampling and the training")


def training_problems(recipe) -> list[TaskProblem]:
    """Prompts to sample on: the task's train split (the lab's is disjoint from the test split the eval harness
    measures; a dataset's is what its spec names, `@train` by default), its first `num_problems`."""
    try:
        return load_task(recipe.task, split="train", count=recipe.num_problems, seed=recipe.seed + 101)
    except ValueError as error:
        raise SystemExit(f"task: {error}") from None


def sample_training_problems(recipe) -> tuple[list[TaskProblem], dict]:
    """The training problems and the recipe's k verified samples of each (shared by shortest and dpo)."""
    from distill.sampling import SampleSettings, draw_samples, sampling_summary

    problems = training_problems(recipe)
    settings = SampleSettings(
        k=recipe.k, temperature=recipe.temperature, max_tokens=recipe.max_tokens, seed=recipe.seed
    )
    # every process asks; the cache's lock lets one draw and the rest read what it drew
    groups = draw_samples(recipe.model_path, problems, settings, prompt=recipe.prompt, engine_settings=recipe.engine)
    if is_main():
        print("samples:", sampling_summary(groups))
    return problems, groups


def conversational_keeps_completions(tokenizer, recipe, problems: list[TaskProblem], groups: dict) -> bool:
    """Whether the chat template renders prompt + assistant turn as the generation prompt followed by the
    completion, verbatim (tried on the first problem's first sample). Not so for templates that open the reasoning
    block in the prompt (DeepSeek-R1) or drop reasoning from assistant turns (R1, Qwen3): training on their
    conversational form would learn another text."""
    messages = recipe.prompt.messages(problems[0].question)
    completion = groups[problems[0].id][0].completion
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": completion}], add_generation_prompt=False, tokenize=False
    )
    return whole.startswith(prompt) and whole[len(prompt) :].startswith(completion)


def training_prompt(tokenizer, messages: list[dict], conversational: bool) -> list[dict] | str:
    """The prompt of a training example: chat messages (TRL applies the template), or the rendered generation
    prompt as text when the template would not keep the completion (then each completion is the sampled text, and
    TRL appends the end-of-sequence token)."""
    if conversational:
        return messages
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def training_completion(completion: str, conversational: bool) -> list[dict] | str:
    return [{"role": "assistant", "content": completion}] if conversational else completion


def longest_prompt(tokenizer, prompts: list[list[dict] | str]) -> int:
    """Tokens of the longest chat prompt, template included (training lengths are set from the data, never cut)."""
    from l2s.generation import chat_prompt_ids

    return max(
        len(tokenizer.encode(p, add_special_tokens=False)) if isinstance(p, str) else len(chat_prompt_ids(tokenizer, p))
        for p in prompts
    )


def common_training_arguments(recipe, work_dir: Path, max_length: int) -> dict:
    """Settings every TRL trainer here takes: the GPU with bf16 when there is one (else the CPU in float32),
    checkpoints every `save_steps` (kept: the last two), loss logged every 10 steps or fewer, a progress bar, and
    the recipe's trackers (`report_to`; none by default)."""
    import torch

    gpu = torch.cuda.is_available()
    if "tensorboard" in recipe.report_to:  # beside the checkpoints, where RL writes its own (RUN_DIR/tensorboard)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(work_dir / "tensorboard")
    return dict(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps or -1,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=recipe.warmup_steps,
        # short runs still log their loss; every checkpoint is at a logging step, or a resumed run would log the
        # mean loss of fewer steps than an uninterrupted one (the Trainer restarts its running sum on resuming)
        logging_steps=math.gcd(recipe.save_steps, min(10, recipe.max_steps or 10)),
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        report_to=list(recipe.report_to),
        use_cpu=not gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=recipe.gradient_checkpointing,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        seed=recipe.seed,
        max_length=max_length,
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def work_dir_for(out: Path, recipe, data: list) -> Path:
    """Where a run keeps its checkpoints: keyed on the output's absolute path, the recipe and the training data,
    so that only the same run resumes from them (a changed recipe or a rebuilt model starts afresh)."""
    return run_dir_for("distill", out, recipe.model_dump(exclude=set(LOGGING_FIELDS)), data)


def train_resumably(trainer, work_dir: Path) -> None:
    """Train, resuming from the last complete checkpoint in `work_dir` if an earlier run was interrupted (one run
    at a time: a second on the same work directory is refused — the main process holds the lock for them all)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(work_dir) if is_main() else nullcontext():
        last = resume_point(work_dir / "checkpoints")
        if last and is_main():
            print(f"resuming from {last}")
        if world_size() > 1 and is_main():
            batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
            print(f"training on {world_size()} processes: {batch * world_size()} examples per optimiser step")
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    if not is_main():
        return
    write_text_atomic(
        work_dir / "loss.json",
        json.dumps([{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]),
    )


def complete_checkpoints(checkpoints: Path) -> list[tuple[Path, dict]]:
    """The `checkpoint-N` that the Trainer finished writing, newest first, with their `trainer_state.json`: it
    writes that file after the weights, optimizer and scheduler, so one without it (a kill mid-save) is skipped,
    with a warning naming it."""
    found = sorted(
        (path for path in checkpoints.glob("checkpoint-*") if path.name.removeprefix("checkpoint-").isdigit()),
        key=lambda path: int(path.name.removeprefix("checkpoint-")),
        reverse=True,
    )
    complete = []
    for checkpoint in found:
        try:
            complete.append((checkpoint, json.loads((checkpoint / "trainer_state.json").read_text())))
        except (OSError, ValueError):
            logger.warning("skipping %s: an incomplete checkpoint (a save that was interrupted)", checkpoint)
    return complete


def resume_point(checkpoints: Path) -> Path | None:
    """Where an interrupted run resumes: its newest complete checkpoint, unless that is the run's last one (saved at
    `max_steps`, then killed before the model was published). Resumed there in mid-epoch (a `--max-steps` run),
    the Trainer (transformers 5.19) trains one step past `max_steps` before it checks the limit: the card counts a
    step more, and the weights move too where the learning rate has not decayed to 0. So such a run resumes from
    the checkpoint before (or from the start) and does its last steps again, to the uninterrupted run's model —
    also at an epoch's end, where the Trainer would stop in time: a few steps again are simpler than telling."""
    for checkpoint, state in complete_checkpoints(checkpoints):
        if state.get("global_step", 0) < state.get("max_steps", math.inf):
            return checkpoint
        logger.warning("%s is the run's last checkpoint: resuming from the one before it", checkpoint)
    return None


def gathered_weights(trainer) -> dict | None:
    """The whole weights, gathered on every process (every process must call it). Under ZeRO-3 gathered here from
    the partitions: accelerate's `get_state_dict` does it only when the launch's DeepSpeed config sets
    `stage3_gather_16bit_weights_on_model_save` (off by default), and then in 16 bits."""
    from distill.deepspeed_policy import full_weights, is_deepspeed

    if is_deepspeed(trainer.model_wrapped):  # (the engine; ZeRO-2 keeps the whole weights on every process)
        return full_weights(trainer.model_wrapped) or trainer.model.state_dict()
    return trainer.accelerator.get_state_dict(trainer.model)


def save_model(trainer, tokenizer, out_dir: Path, method: str, recipe: TrainedRecipe, examples: list, **extra) -> None:
    """The trained model (or LoRA adapter), its tokenizer and its card, published atomically as `out_dir` (by the
    main process alone, once every process has helped gather weights that FSDP or ZeRO-3 keep in shards)."""
    state_dict = gathered_weights(trainer) if world_size() > 1 else None
    if not is_main():
        return
    with atomic_model_dir(out_dir) as temporary:
        lora = save_weights(trainer.model, temporary, recipe, state_dict)
        tokenizer.save_pretrained(str(temporary))
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        write_card(
            temporary,
            new_card(
                name=out_dir.name,
                method=method,
                parents=[Path(recipe.model).name],
                recipe=recipe.model_dump(),
                role="short",
                data_hash=stable_hash(examples),
                training={
                    "steps": trainer.state.global_step,
                    "final_loss": losses[-1] if losses else None,
                    "processes": world_size(),
                },
                **lora,
                **extra,
            ),
        )
