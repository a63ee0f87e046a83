"""Supervised training of the lab models: a plain PyTorch loop over chat-formatted examples.

The loss is on the assistant's tokens only. Batches are drawn from length buckets so that long traces do not
drag padding into every batch: the budget is optimiser steps, not seconds (at equal time a padded batch of
long traces gets far fewer steps, which is what made the first long-CoT model weak).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from l2s.atomic import write_atomic
from l2s.lab.task import Problem

logger = logging.getLogger("l2s")


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    min_learning_rate_ratio: float = 0.1
    weight_decay: float = 0.01
    bucket_pool: int = 16  # batches sorted by length within a pool of this many batches
    checkpoint_every: int = 100  # steps between resumable checkpoints (when train() is given a path)


def encode_example(tokenizer: PreTrainedTokenizerFast, question: str, completion: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one chat example; labels are -100 over the prompt."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    completion_ids = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    return list(prompt_ids) + completion_ids, [-100] * len(prompt_ids) + completion_ids


def _learning_rate(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.min_learning_rate_ratio
    return settings.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, example_labels) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(example_labels)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    problems: list[Problem],
    make_completion: Callable[[Problem, random.Random], str],
    settings: TrainSettings,
    seed: int,
    description: str,
    checkpoint: Path | None = None,
    keep_final: bool = False,
) -> list[float]:
    """Train `model` in place for `settings.steps` steps; returns the loss per step.

    `make_completion` draws a fresh completion per use, so long traces vary across epochs as they do across
    samples. With a `checkpoint` path, everything the loop carries (weights, AdamW's moments, the random states,
    the data order and the batches drawn but not yet used) is saved there every `checkpoint_every` steps, and a
    run killed in between resumes from it to exactly the weights an uninterrupted run reaches. With `keep_final`
    the last step's state is saved too, so that a call resumed after the loop ended trains no step again.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )
    order: list[int] = []  # indices into `problems`, shuffled each epoch
    pending: list[list[tuple[list[int], list[int]]]] = []
    losses: list[float] = []
    start = 0
    saved = _load_checkpoint(checkpoint, model) if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.setstate(saved["rng"])
        torch.set_rng_state(saved["torch_rng"])
        start, order, pending, losses = saved["step"], saved["order"], saved["pending"], saved["losses"]
        print(f"{description}: resuming at step {start} from {checkpoint}")
    progress = tqdm(
        range(start, settings.steps), initial=start, total=settings.steps, desc=description, unit="step",
        dynamic_ncols=True,
    )  # fmt: skip
    for step in progress:
        if not pending:
            pool = []
            for _ in range(settings.batch_size * settings.bucket_pool):
                if not order:
                    order = list(range(len(problems)))
                    rng.shuffle(order)
                problem = problems[order.pop()]
                pool.append(encode_example(tokenizer, problem.question, make_completion(problem, rng)))
            pool.sort(key=lambda example: len(example[0]))
            pending = [pool[i : i + settings.batch_size] for i in range(0, len(pool), settings.batch_size)]
            rng.shuffle(pending)
        batch = _collate(pending.pop(), tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            progress.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
        done = step + 1
        final = done == settings.steps
        if checkpoint is not None and ((done % settings.checkpoint_every == 0 and not final) or (keep_final and final)):
            state = {
                "step": done, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "order": order, "pending": pending,
                "losses": losses,
            }  # fmt: skip
            write_atomic(checkpoint, lambda temporary, state=state: torch.save(state, temporary))
    model.eval()
    return losses


def _load_checkpoint(path: Path, model: torch.nn.Module) -> dict | None:
    """The saved training state, or None: none saved yet, or one that does not load or does not fit `model`
    (written atomically, so only damage after the fact can do that), which is skipped with a warning naming it:
    the stage starts afresh. Checked whole before anything is restored, so a bad one changes nothing."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        shapes = {name: tensor.shape for name, tensor in saved["model"].items()}
        if shapes != {name: tensor.shape for name, tensor in model.state_dict().items()}:
            raise ValueError("its weights do not fit the model")
        missing = {"step", "optimizer", "rng", "torch_rng", "order", "pending", "losses"} - set(saved)
        if missing:
            raise ValueError(f"it lacks {sorted(missing)}")
        return saved
    except Exception as error:  # (torch raises several kinds for a damaged file)
        logger.warning("skipping %s: it does not load (%s); the stage starts afresh", path, error)
        return None
