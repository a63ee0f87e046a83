"""`l2s distill rl`: k1.5's online policy mirror descent with the length penalty (SPEC §3.1).

    l2s distill rl --model models/lab-long --out models/lab-rl --recipe configs/distill/rl.yaml [--resume]

Each iteration i, top to bottom in `run`:

  1. The current policy becomes the reference π_θi. The vLLM engine holds exactly these weights (loaded in place
     from the previous iteration's checkpoint), so samples come from π_θi.
  2. Draw problems (curriculum by level, prioritised by 1 − running success rate) and sample k responses each.
     With partial rollouts, each iteration generates at most `rollout_tokens` per response; unfinished ones
     are stored and continued next iteration, and a problem trains once all its k responses are complete.
  3. Reward r_j = correct_j + w · length_reward_j, the length reward within the problem's own k samples
     (w = 0 during the warm-up). Baseline r̄ = mean_j r_j (or τ·log mean exp(r_j/τ)).
  4. Gradient steps (AdamW: fresh each iteration, or with `keep_optimizer_state` its moments carried over — a
     fresh one takes sign-like first steps of size lr on every weight, which made runs drift) on

         L(θ) = 1/(2τ) · mean_x mean_j ( r_j − r̄ − τ · (log π_θ(y_j|x) − log π_θi(y_j|x)) )²

     whose negative gradient per problem is exactly SPEC's
         (1/k) Σ_j [ ∇log π_θ(y_j|x) · (r_j − r̄) − (τ/2) · ∇( log π_θ(y_j|x)/π_θi(y_j|x) )² ].
     log π is of the whole response (a sum over its tokens, no per-token normalisation). No value network,
     no clipping.
  5. Write a complete checkpoint atomically and load it into the engine (it becomes π_θ(i+1)); log.

Resuming is exact: a checkpoint is the weights (plus AdamW's moments when they are kept) and a small JSON state
(iteration, running success rates, stored partial rollouts, random state); `--resume` continues from the last.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from distill import deepspeed_policy
from distill.lora import LoraRecipe, peft_config, save_weights
from distill.recipe import TaskRecipe
from distill.reporting import LOGGING_FIELDS, MetricsReport, ReportingRecipe
from distill.rewards import baseline, total_rewards
from distill.sharding import (
    check_fsdp_settings,
    fsdp_requested,
    full_optimizer_state,
    full_weights,
    gradient_sync,
    is_sharded,
    load_optimizer_state,
    shard_policy,
)
from distill.validation import Score, SelectionRule, describe_rule, score_policy, select, validation_split
from l2s.adapters import module_suffixes
from l2s.atomic import save_figure_atomic, write_text_atomic
from l2s.cards import atomic_model_dir, new_card, write_card
from l2s.distributed import all_gather, barrier, gather_shards, is_main, shard, sharded, world_size
from l2s.formats import split_completion
from l2s.home import exclusive, run_dir_for
from l2s.jsonl import CorruptFile, read_json
from l2s.tasks import TaskProblem

# where the samples come from and how the weights get there: not what the run computes (a resumed run may change them)
ROLLOUT_FIELDS = ("rollout_server", "rollout_weights", "rollout_group_address")

OPTIMIZER_FILE = "optimizer.pt"
logger = logging.getLogger("l2s")

if TYPE_CHECKING:  # torch is imported where it runs: `l2s --help` loads this module for the recipe's flags
    import torch


class RLRecipe(LoraRecipe, ReportingRecipe, TaskRecipe):
    iterations: int = Field(10, ge=1, description="RL iterations (sample, then train)")
    problems_per_iteration: int = Field(64, ge=1, description="problems sampled per iteration")
    k: int = Field(8, ge=2, description="samples per problem")
    tau: float = Field(0.5, gt=0, description="KL regulariser τ")
    length_weight: float = Field(1.0, ge=0, description="w, the weight of the length reward")
    length_warmup_iterations: int = Field(2, ge=0, description="iterations without the length reward")
    consolidation_iterations: int = Field(
        0,
        ge=0,
        description="the last N iterations train on correctness alone (length weight 0), at the length the policy "
        "has reached: the accuracy lost in shortening comes back without the length growing",
    )
    length_reward_groups: Literal["all", "all_correct"] = Field(
        "all",
        description="groups that get the length reward: every group (k1.5), or only those whose k samples are "
        "all correct (problems still answered wrong sometimes train on correctness alone)",
    )
    max_tokens: int = Field(512, ge=1, description="maximum rollout length (lower it for long2short)")
    baseline: Literal["mean", "logmeanexp"] = Field("mean", description="τ·log Z estimate: mean reward or exact")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate")
    keep_optimizer_state: bool = Field(
        False, description="carry AdamW's moments across iterations (saved with each checkpoint) instead of a fresh one"
    )
    epochs_per_iteration: int = Field(2, ge=1, description="passes over each iteration's samples")
    minibatch_problems: int = Field(8, ge=1, description="problems (times k samples) per optimiser step")
    micro_batch_size: int | None = Field(
        None, ge=1, description="samples per forward pass, gradients accumulated over a minibatch (default: all)"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (memory)")
    curriculum: bool = Field(True, description="open difficulty levels from easy to hard over the first half")
    prioritized: bool = Field(True, description="draw problems by 1 - running success rate")
    level_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each iteration's draws that goes to difficulty levels in proportion to their failure "
        "rate in the last iteration's samples (the rest as without it): more samples where the errors are",
    )
    pool_size: int = Field(4000, ge=1, description="training problems to draw from")
    partial_rollouts: bool = Field(False, description="continue long responses over iterations")
    rollout_tokens: int = Field(128, ge=1, description="with partial rollouts: tokens per response per iteration")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    rollout_server: str | None = Field(
        None,
        description="sample from this vLLM server (`l2s distill rollout-server`) instead of an engine in this process",
    )
    rollout_weights: Literal["checkpoint", "group"] = Field(
        "checkpoint",
        description="how the policy reaches the rollout server each iteration: a checkpoint path it loads (the two "
        "share a filesystem) or a broadcast over a process group of their own (NCCL between GPUs, gloo on CPUs)",
    )
    rollout_group_address: str | None = Field(
        None,
        description="with rollout_weights: group, this machine's address as the rollout server reaches it "
        "(default: 127.0.0.1 for a server on loopback, else this host name's address)",
    )
    validation_problems: int = Field(256, ge=0, description="validation problems scored greedily (0: none)")
    validation_task: str | None = Field(
        None,
        description="where they come from (its validation split); default: the lab's validation split for the lab, "
        "else a hashed hold-out of the task that is never trained on",
    )
    validate_every: int = Field(2, ge=1, description="score the policy every this many iterations (and the last)")
    selection_tolerance: float = Field(
        0.01, ge=0, le=1, description="keep only checkpoints within this much validation accuracy of the start"
    )
    selection_rule: SelectionRule = Field(
        "fewest_tokens",
        description="among those, the one with the fewest reasoning tokens, or the highest AES against the start "
        "(distill/validation.py)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _consolidation_after_shortening(self) -> RLRecipe:
        shortening = self.iterations - self.length_warmup_iterations - self.consolidation_iterations
        if self.consolidation_iterations and shortening < 1:
            raise ValueError(
                f"consolidation_iterations ({self.consolidation_iterations}) after length_warmup_iterations "
                f"({self.length_warmup_iterations}) must leave some of the {self.iterations} iterations to shorten in"
            )
        return self

    @model_validator(mode="after")
    def _rollout_server_without_lora(self) -> RLRecipe:
        if self.rollout_server and self.lora:
            raise ValueError("rollout_server: a LoRA run samples on its own engine (the server loads whole models)")
        if self.rollout_weights == "group" and not self.rollout_server:
            raise ValueError("rollout_weights: group sends the weights to a rollout server: set rollout_server")
        return self


# --- the loss ----------------------------------------------------------------------------------------------


def opmd_loss(
    logprobs: torch.Tensor, reference_logprobs: torch.Tensor, rewards: torch.Tensor, baselines: torch.Tensor, tau: float
) -> torch.Tensor:
    """1/(2τ) · mean_j (r_j − r̄ − τ·(log π_θ − log π_θi))² over a batch of samples (each row one response,
    `baselines` holding its problem's r̄). Its negative gradient is SPEC §3.1's, averaged over the batch."""
    log_ratio = logprobs - reference_logprobs
    return ((rewards - baselines - tau * log_ratio) ** 2).mean() / (2 * tau)


def sequence_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """log π(completion | prompt) of each pair: the sum of its tokens' log-probabilities."""
    import torch

    sequences = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)  # which next-token predictions count
    for row, (prompt, sequence) in enumerate(zip(prompts, sequences)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention[row, : len(sequence)] = 1
        mask[row, len(prompt) : len(sequence)] = True
    device = next(model.parameters()).device
    input_ids, attention, mask = input_ids.to(device), attention.to(device), mask.to(device)
    # on a GPU the forward runs in bf16 (float32 master weights and optimizer); on the CPU all in float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logprobs * mask[:, 1:]).sum(dim=1)


# --- problems: curriculum and prioritised sampling ------------------------------------------------------------


@dataclass
class RunState:
    """Everything besides the weights that an iteration changes (saved with each checkpoint)."""

    iteration: int = 0
    success: dict[str, list[float]] = field(default_factory=dict)  # problem id -> [successes, attempts]
    pending: list[dict] = field(default_factory=list)  # partial rollouts waiting to be continued
    history: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)  # distill.validation.Score of each scored iteration


def choose_problems(
    pool: list[TaskProblem], recipe: RLRecipe, state: RunState, rng: random.Random
) -> list[TaskProblem]:
    """Curriculum: levels open up from easy to hard over the first half of the run, so the second half trains
    on all of them (a policy shortened on the easiest level alone learns to stop after its one step, which
    then costs accuracy on longer sums). Prioritised: draw without replacement with probability
    ∝ 1 − running success rate (unseen problems count as 0.5); with `level_share`, part of the draw goes to the
    levels that failed most in the last iteration."""
    candidates = pool
    if recipe.curriculum:
        levels = sorted({p.level for p in pool})
        half = max(1, recipe.iterations // 2)
        opened = 1 + (len(levels) - 1) * min(state.iteration, half) // half
        candidates = [p for p in pool if p.level in levels[:opened]]
    busy = {rollout["problem_id"] for rollout in state.pending}
    candidates = [p for p in candidates if p.id not in busy]
    wanted = min(recipe.problems_per_iteration, len(candidates))
    if not recipe.prioritized and not recipe.level_share:
        return rng.sample(candidates, wanted)
    weights = []
    for problem in candidates:
        wins, tries = state.success.get(problem.id, [0.0, 0.0])
        weights.append(max(1e-3, 1 - (wins / tries if tries else 0.5)) if recipe.prioritized else 1.0)
    weights = with_level_share(weights, candidates, recipe.level_share, state)
    chosen = []
    for _ in range(wanted):  # weighted sampling without replacement (Efraimidis–Spirakis keys)
        keys = [rng.random() ** (1 / w) for w in weights]
        index = max(range(len(candidates)), key=keys.__getitem__)
        chosen.append(candidates.pop(index))
        weights.pop(index)
    return chosen


def with_level_share(weights: list[float], candidates: list[TaskProblem], share: float, state: RunState) -> list[float]:
    """`weights` (each problem's own) mixed with a level term that puts `share` of the total on the difficulty
    levels in proportion to their failure rate in the last iteration's samples. A pool rarely draws a problem
    twice, so a problem's own success rate says little; its level's says where the errors are (on the lab:
    4-term sums, which lose accuracy as traces shorten while 2-term sums never do)."""
    if not share:
        return weights
    failures = (state.history[-1].get("accuracy_by_level") if state.history else None) or {}
    failures = {level: 1 - accuracy for level, accuracy in failures.items()}
    sizes = Counter(problem.level for problem in candidates)
    level_total = sum(failures.get(level, 0.0) for level in sizes)  # (0: no failure among the open levels)
    if not level_total:
        return weights
    # the level term's total against the own weights': share to 1 - share
    scale = sum(weights) * share / (1 - share) / level_total
    return [w + scale * failures.get(p.level, 0.0) / sizes[p.level] for w, p in zip(weights, candidates)]


# --- sampling from π_θi ----------------------------------------------------------------------------------------


def rollouts(
    engine, tokenizer, problems: list[TaskProblem], recipe: RLRecipe, state: RunState, seed: int
) -> list[dict]:
    """Sample (or continue) responses; return the complete groups of k, keep unfinished ones in `state`."""
    from l2s.generation import chat_prompt_ids, check_template_keeps, engine_format, generate_from_ids

    fmt = engine_format(engine)

    if problems:
        check_template_keeps(tokenizer, recipe.prompt.messages(problems[0].question))

    fresh = [
        {
            "problem_id": p.id,
            "problem": p.to_dict(),  # a partial rollout is verified iterations later, from the checkpoint's state
            "sample": j,
            "prompt": chat_prompt_ids(tokenizer, recipe.prompt.messages(p.question)),
            "completion": [],
            "engine_logprob": 0.0,  # log π_θi(completion) as the engine sampled it
        }
        for p in problems
        for j in range(recipe.k)
    ]
    work = state.pending + fresh
    state.pending = []
    step_cap = recipe.rollout_tokens if recipe.partial_rollouts else recipe.max_tokens
    caps = [min(step_cap, recipe.max_tokens - len(r["completion"])) for r in work]
    requests = [  # (prompt, cap, seed) each: one seed per response, as the k prompts of a problem are the same
        (r["prompt"] + r["completion"], cap, seed + index) for index, (r, cap) in enumerate(zip(work, caps))
    ]

    def draw(share: list[tuple]) -> list:
        return generate_from_ids(
            engine,
            [prompt for prompt, _, _ in share],
            temperature=recipe.temperature,
            max_tokens=[cap for _, cap, _ in share],
            seed=[request_seed for _, _, request_seed in share],
            progress=False,
            logprobs=True,
        )

    # under `accelerate launch` each process's engine samples its share; every process gets them all (the length
    # reward compares all k samples of a problem, and the run's state stays the same on every process)
    outputs = sharded(draw, requests)
    for rollout, (sample,) in zip(work, outputs):
        rollout["completion"] = rollout["completion"] + sample.token_ids
        rollout["engine_logprob"] = rollout.get("engine_logprob", 0.0) + sample.logprob
        rollout["finished"] = sample.finish_reason == "stop"
        rollout["done"] = rollout["finished"] or len(rollout["completion"]) >= recipe.max_tokens
    groups: dict[str, list[dict]] = {}
    for rollout in work:
        groups.setdefault(rollout["problem_id"], []).append(rollout)
    complete = []
    for group in groups.values():
        if all(r["done"] for r in group) and len(group) == recipe.k:
            for r in group:
                text = tokenizer.decode(r["completion"], skip_special_tokens=True)
                problem = TaskProblem.from_dict(r["problem"])
                answer = split_completion(fmt, text, r["completion"]).answer
                r["correct"] = r["finished"] and problem.is_correct(answer)
                r["length"] = len(r["completion"])
            complete.append(sorted(group, key=lambda r: r["sample"]))
        else:
            state.pending.extend(group)  # continued next iteration (partial rollouts)
    return complete


# --- one iteration of training ---------------------------------------------------------------------------------


def new_optimizer(model, recipe: RLRecipe) -> torch.optim.Optimizer:
    import torch

    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]  # (LoRA: the adapter's)
    return torch.optim.AdamW(trainable, lr=recipe.learning_rate, weight_decay=0.0)


def unwrapped(model):
    """The policy itself: under `accelerate launch` the model trains wrapped in DDP or a DeepSpeed engine (FSDP2
    shards it in place)."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = isinstance(model, DistributedDataParallel) or deepspeed_policy.is_deepspeed(model)
    return model.module if wrapped else model


def optimizer_step(model, optimizer) -> None:
    """AdamW's step over the minibatch's gradients, which are then zeroed. A DeepSpeed engine owns the step: it
    reduces the gradients into their partitions, steps AdamW over them and zeroes the gradients."""
    if deepspeed_policy.is_deepspeed(model):
        model.step()
    else:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def train_iteration(
    model,
    tokenizer,
    groups: list[list[dict]],
    recipe: RLRecipe,
    length_weight: float,
    rng: random.Random,
    optimizer: torch.optim.Optimizer,
) -> dict:
    import torch

    pad = tokenizer.pad_token_id
    eos = [tokenizer.eos_token_id]
    batch = []  # (prompt, completion, reward, baseline) per sample
    engine_logprobs = []  # the engine's log π_θi of each sample, in batch order
    for group in groups:
        rewards = total_rewards(
            [r["length"] for r in group],
            [r["correct"] for r in group],
            length_weight,
            only_all_correct=recipe.length_reward_groups == "all_correct",
        )
        group_baseline = baseline(rewards, recipe.tau, exact=recipe.baseline == "logmeanexp")
        for rollout, reward in zip(group, rewards):
            completion = rollout["completion"] + (eos if rollout["finished"] else [])
            batch.append((rollout["prompt"], completion, reward, group_baseline))
            engine_logprobs.append(rollout["engine_logprob"])
    # log π_θi of every sample, before any update (θ = θi now); each process computes its share
    policy = unwrapped(model)
    mine = shard(range(len(batch)))
    shares = []
    with torch.no_grad():  # (as many forwards on every process: under FSDP each forward gathers weights)
        for chunk in equal_rounds(mine, len(batch), recipe.micro_batch_size or 64):
            rows = chunk or [0]  # (an empty round still runs its forward, on one sample, left out)
            logprobs = sequence_logprobs(policy, [batch[i][0] for i in rows], [batch[i][1] for i in rows], pad)
            shares.append(logprobs[: len(chunk)])
    device = next(policy.parameters()).device
    reference = torch.tensor(gather_shards(torch.cat(shares).tolist() if shares else [], len(batch)), device=device)
    per_step = recipe.minibatch_problems * recipe.k
    losses, log_ratios = [], []
    model.train()
    for _ in range(recipe.epochs_per_iteration):
        order = list(range(len(batch)))
        rng.shuffle(order)  # (the same order on every process: their random states are the same)
        for chunk in _chunks(order, per_step):
            loss_value = 0.0
            # The minibatch's mean loss, as a sum over micro-batches each weighted by its share of the minibatch.
            # Under `accelerate launch` each process takes every world_size-th sample of it; DDP, FSDP and
            # DeepSpeed average the processes' gradients, so each share is weighted world_size times more. Every
            # process runs as many micro-batches (FSDP's and ZeRO-3's forwards and backwards are collective), one
            # sample weighted 0 where its share has none; DDP reduces the gradients once, on the last, FSDP into its
            # shards on each, DeepSpeed into its partitions.
            share = shard(chunk)
            micros = equal_rounds(share, len(chunk), recipe.micro_batch_size or len(chunk))
            for number, micro in enumerate(micros):
                items = [batch[i] for i in micro or chunk[:1]]
                last = number == len(micros) - 1
                with gradient_sync(model, last):
                    logprobs = sequence_logprobs(model, [b[0] for b in items], [b[1] for b in items], pad)
                    loss = opmd_loss(
                        logprobs,
                        reference[micro or chunk[:1]],
                        torch.tensor([b[2] for b in items], device=device),
                        torch.tensor([b[3] for b in items], device=device),
                        recipe.tau,
                    )
                    if len(micro) != len(chunk):
                        loss = loss * (len(micro) / len(chunk))
                    (loss * world_size()).backward()  # (× 1 on one process: the same gradients, bit for bit)
                loss_value += loss.item()
                if micro:
                    log_ratios.extend((logprobs.detach() - reference[micro]).tolist())
            optimizer_step(model, optimizer)
            losses.append(loss_value)
    if world_size() > 1:  # the whole minibatch's loss is the sum of the processes' shares
        losses = [sum(step) for step in zip(*all_gather(losses))]
        log_ratios = [x for share in all_gather(log_ratios) for x in share]
    model.eval()
    # Samples must come from π_θi for the surrogate to be on-policy: the engine's log-probabilities of what it
    # sampled against the trainer's, per sequence (float rounding only, when the engine holds θi exactly).
    engine_gaps = [abs(ours - theirs) for ours, theirs in zip(reference.tolist(), engine_logprobs)]
    return {
        "loss": sum(losses) / len(losses),
        "engine_logprob_gap": sum(engine_gaps) / len(engine_gaps),
        "kl_term": recipe.tau * sum(x * x for x in log_ratios) / len(log_ratios) / 2,
        "mean_reward": sum(b[2] for b in batch) / len(batch),
    }


def accuracy_by_level(groups: list[list[dict]], levels: dict[str, str]) -> dict[str, float]:
    """The sample accuracy of each difficulty level among this iteration's groups."""
    tally: dict[str, list[int]] = {}
    for group in groups:
        record = tally.setdefault(levels[group[0]["problem_id"]], [0, 0])
        record[0] += sum(r["correct"] for r in group)
        record[1] += len(group)
    return {level: wins / tries for level, (wins, tries) in sorted(tally.items())}


def rollouts_of(groups: list[list[dict]]) -> list[dict]:
    return [rollout for group in groups for rollout in group]


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def equal_rounds(share: list, total: int, size: int) -> list[list]:
    """`share` (this process's part of `total` items) in chunks of `size`, as many chunks on every process (the
    largest share's count; at least one), the missing ones empty. On one process: the share's own chunks."""
    rounds = max(1, math.ceil(math.ceil(total / world_size()) / size))
    return [share[number * size : (number + 1) * size] for number in range(rounds)]


# --- engine weights and checkpoints --------------------------------------------------------------------------------


def refresh_engine(engine, checkpoint: Path, recipe: RLRecipe, iteration: int, weights: dict | None = None):
    """The engine, now serving exactly the weights of `checkpoint`: loaded in place (a restart cost 28–42 s of each
    iteration on 2 CPU cores). vLLM's in-place reload alone left the CPU build's packed embedding and LM head
    stale; `reload_engine_weights` repacks them and drops the prefix cache, and tests/test_inplace_reload.py
    checks the result against a fresh engine token for token. Rollouts are seeded per request, so the run is
    the same either way. With LoRA the base weights stay and the engine applies the checkpoint's adapter. With
    `rollout_weights: group` the rollout server gets `weights` (the checkpoint's, on the main process) by
    broadcast instead."""
    from l2s.generation import use_adapter
    from l2s.inplace_reload import reload_engine_weights

    if recipe.rollout_weights == "group":
        engine.send_weights(weights)
    elif recipe.lora:
        use_adapter(engine, checkpoint, version=iteration)
    else:
        reload_engine_weights(engine, checkpoint)
    return engine


def policy_weights(model, recipe: RLRecipe) -> dict:
    """The policy's whole weights on the main process (every process must call it: FSDP and ZeRO-3 gather them)."""
    weights, _ = whole_state(model, None, recipe)
    return weights if weights is not None else unwrapped(model).state_dict()


def trainer_address(server_url: str) -> str:
    """This machine's address as a rollout server at `server_url` reaches it: loopback for a server on loopback."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(server_url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return "127.0.0.1"
    return socket.gethostbyname(socket.gethostname())


def load_policy(recipe: RLRecipe, checkpoint: Path | None):
    """The policy to train: the start model or a checkpoint's weights; with LoRA, the start model with a new
    adapter (seeded) or the checkpoint's adapter, only the adapter trainable."""
    import torch
    from transformers import AutoModelForCausalLM

    if not recipe.lora:
        return AutoModelForCausalLM.from_pretrained(checkpoint or recipe.model_path, dtype=torch.float32)
    from peft import PeftModel, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(recipe.model_path, dtype=torch.float32)
    if checkpoint is None:
        return get_peft_model(base, peft_config(recipe))
    return PeftModel.from_pretrained(base, checkpoint, is_trainable=True)


def whole_state(model, optimizer, recipe: RLRecipe) -> tuple[dict | None, dict | None]:
    """The policy's weights (None: the model's own, unsharded) and AdamW's state (None: not kept) to checkpoint;
    under FSDP and DeepSpeed every process takes part in gathering them and the main process receives them."""
    if deepspeed_policy.is_deepspeed(model):
        moments = deepspeed_policy.full_optimizer_state(model, recipe.learning_rate) if optimizer is not None else None
        return deepspeed_policy.full_weights(model), moments
    if not is_sharded(model):
        return None, optimizer.state_dict() if optimizer is not None else None
    return full_weights(model), full_optimizer_state(model, optimizer) if optimizer is not None else None


def save_checkpoint(
    run_dir: Path,
    model,
    tokenizer,
    state: RunState,
    rng: random.Random,
    chosen: int,
    weights: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    import torch

    final = checkpoint_dir(run_dir, state.iteration)
    with atomic_model_dir(final) as temporary:
        model.save_pretrained(temporary, **({"state_dict": weights} if weights is not None else {}))
        tokenizer.save_pretrained(temporary)
        if optimizer_state is not None:  # a resumed run must continue with the same moments to stay bit for bit
            torch.save(optimizer_state, temporary / OPTIMIZER_FILE)
        write_state(temporary, state, rng)
    keep = {checkpoint_dir(run_dir, n).name for n in (state.iteration, state.iteration - 1, chosen)}
    for older in run_dir.glob("iter-*"):  # the last two (to resume) and the selected one (the output)
        if older.name not in keep:
            shutil.rmtree(older, ignore_errors=True)
    return final


def write_state(checkpoint: Path, state: RunState, rng: random.Random) -> None:
    """state.json marks a checkpoint complete; rewritten in place (atomically) when its validation score lands."""
    write_text_atomic(checkpoint / "state.json", json.dumps({**asdict(state), "rng": rng.getstate()}, default=list))


def checkpoint_dir(run_dir: Path, iteration: int) -> Path:
    return run_dir / f"iter-{iteration:04d}"


def write_logs(run_dir: Path, state: RunState, chosen: int | None) -> None:
    """metrics.jsonl and validation.jsonl, rewritten whole from the state, so a kill never drops a line."""
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in state.history))
    write_text_atomic(
        run_dir / "validation.jsonl",
        "".join(json.dumps({**v, "selected": v["iteration"] == chosen}) + "\n" for v in state.validation),
    )


def length_weight_at(iteration: int, recipe: RLRecipe) -> float:
    """w for the iteration that starts after `iteration` ones: 0 in the warm-up (standard policy optimisation
    first, SPEC §3.1) and in the final consolidation iterations, the recipe's in between."""
    shortening = recipe.length_warmup_iterations <= iteration < recipe.iterations - recipe.consolidation_iterations
    return recipe.length_weight if shortening else 0.0


def chosen_iteration(state: RunState, recipe: RLRecipe) -> int:
    """The iteration the selection rule keeps so far; without validation, the last one."""
    if not state.validation:
        return state.iteration
    return select([Score(**v) for v in state.validation], recipe.selection_tolerance, recipe.selection_rule).iteration


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: its state.json (written last, atomically) reads back; any newer one that
    does not is skipped with a warning naming it."""
    for path in sorted(run_dir.glob("iter-*"), reverse=True):
        try:
            read_state(path)
            return path
        except CorruptFile as error:
            logger.warning("skipping an incomplete checkpoint: %s", error)
    return None


def read_state(checkpoint: Path) -> tuple[RunState, random.Random]:
    """A checkpoint's run state and random state, or CorruptFile naming what is wrong with its state.json."""
    path = checkpoint / "state.json"
    raw = read_json(path, "checkpoint state")
    try:
        rng = _restore_rng(raw.pop("rng"))
        return RunState(**raw), rng
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptFile(f"{path}: not a checkpoint state ({type(error).__name__}: {error})") from None


def _restore_rng(raw) -> random.Random:
    rng = random.Random()
    version, internal, gauss = raw
    rng.setstate((version, tuple(internal), gauss))
    return rng


# --- the loop --------------------------------------------------------------------------------------------------


def run(recipe: RLRecipe, out: Path, resume: bool = False, stop_after: int | None = None) -> Path | None:
    run_dir = run_dir_for("rl", out)  # one per output (its absolute path); the recipe is checked on --resume
    run_dir.mkdir(parents=True, exist_ok=True)
    # a second run on the same output is refused while this one lives (its main process holds the lock)
    with exclusive(run_dir) if is_main() else nullcontext():
        return _run(recipe, out, run_dir, resume, stop_after)


def _run(recipe: RLRecipe, out: Path, run_dir: Path, resume: bool, stop_after: int | None) -> Path | None:
    import torch
    from transformers import AutoTokenizer

    from l2s.generation import close_engine, open_engine

    accelerator = start_processes(recipe)  # under `accelerate launch`: the processes joined; else None
    recipe_path = run_dir / "recipe.json"
    if (
        resume
        and recipe_path.is_file()
        and not continues(RLRecipe.model_validate_json(recipe_path.read_text()), recipe)
    ):
        raise SystemExit(
            f"--resume: {run_dir} holds a run of another recipe; drop --resume (or, where a sweep passes it, "
            "delete that directory) to start afresh"
        )
    barrier()  # every process has read the old recipe before the main one writes the new
    if is_main():
        write_text_atomic(recipe_path, recipe.model_dump_json(indent=2))
        if not resume and any(run_dir.glob("iter-*")):
            for old in run_dir.glob("iter-*"):
                shutil.rmtree(old)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            (run_dir / "validation.jsonl").unlink(missing_ok=True)
    barrier()
    # a checkpoint holds the whole run (weights, moments, state), so it resumes at any number of processes; the
    # main process picks it, so that every process resumes from the same one (they share $L2S_HOME)
    start_from = all_gather(last_checkpoint(run_dir) if resume and is_main() else None)[0]
    if resume and start_from is None and is_main():
        print("no complete checkpoint to resume from: starting fresh")
    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(start_from or recipe.model_path)
    model = load_policy(recipe, start_from).eval()
    if torch.cuda.is_available():
        model = model.to(accelerator.device if accelerator else "cuda")
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if start_from:
        state, rng = read_state(start_from)
        if is_main():
            print(f"resuming after iteration {state.iteration} from {start_from}")
    else:
        rng, state = random.Random(recipe.seed), RunState()
    if accelerator and fsdp_requested():  # sharded before AdamW is made, so its moments are sharded too
        model = shard_policy(model)
    optimizer = new_optimizer(model, recipe)
    if accelerator and deepspeed_policy.deepspeed_requested():  # the engine partitions AdamW's moments
        model = accelerator.prepare(model, optimizer)[0]
    if start_from and recipe.keep_optimizer_state:
        try:
            saved = torch.load(start_from / OPTIMIZER_FILE)
            if is_sharded(model):
                load_optimizer_state(model, optimizer, saved)
            elif deepspeed_policy.is_deepspeed(model):
                deepspeed_policy.load_optimizer_state(model, saved)
            else:
                optimizer.load_state_dict(saved)
        except Exception as error:  # (torch raises several kinds for a damaged file)
            raise CorruptFile(
                f"{start_from / OPTIMIZER_FILE}: does not load ({error}); delete {start_from} to resume from the "
                "checkpoint before it"
            ) from None
    if accelerator and not is_sharded(model) and not deepspeed_policy.is_deepspeed(model):
        model = accelerator.prepare_model(model)  # DDP around the policy; AdamW stays plain (DDP reduces gradients)
    try:
        pool, held_out = validation_split(recipe)
    except ValueError as error:
        raise SystemExit(f"task: {error}") from None

    levels = {problem.id: problem.level for problem in pool}

    def validate_if_due() -> None:
        """Score the engine's weights (= the policy after `state.iteration` iterations) if the schedule asks and
        this iteration has no score yet — also after a resume from a checkpoint killed before its score landed."""
        due = state.iteration % recipe.validate_every == 0 or state.iteration == recipe.iterations
        if not held_out or not due or any(v["iteration"] == state.iteration for v in state.validation):
            return
        score = score_policy(engine, held_out, state.iteration, recipe.max_tokens, recipe.prompt)
        state.validation.append(score.to_dict())
        if not is_main():
            return
        if state.iteration:
            write_state(checkpoint_dir(run_dir, state.iteration), state, rng)
        tqdm.write(
            f"validation after iteration {state.iteration}: accuracy {score.accuracy:.3f}, "
            f"reasoning tokens {score.reasoning_tokens:.1f} (kept so far: iteration {chosen_iteration(state, recipe)})"
        )

    engine_settings = recipe.engine.model_copy(update={"seed": recipe.seed})
    if "gpu_memory_utilization" not in recipe.engine.model_fields_set:
        # the engine shares the GPU with the trainer (weights, gradients, AdamW moments, activations)
        engine_settings = engine_settings.model_copy(update={"gpu_memory_utilization": 0.4})
    if recipe.rollout_server:  # the server loads the start (or resumed) weights, whatever it was started with
        from distill.rollout_server import RemoteEngine
        from l2s.inplace_reload import reload_engine_weights

        engine = RemoteEngine(recipe.rollout_server, start_from or recipe.model_path)
        if recipe.rollout_weights == "group":
            engine.open_weight_group(recipe.rollout_group_address or trainer_address(recipe.rollout_server))
            engine.send_weights(policy_weights(model, recipe))
        else:
            reload_engine_weights(engine, start_from or recipe.model_path)
    elif recipe.lora:  # the start model's weights stay in the engine; each checkpoint's adapter is applied to them
        targets = module_suffixes(unwrapped(model).peft_config["default"].target_modules)
        engine = open_engine(recipe.model_path, engine_settings, recipe.lora_rank, lora_target_modules=targets)
        if start_from:
            refresh_engine(engine, start_from, recipe, state.iteration)
    else:
        engine = open_engine(start_from or recipe.model_path, engine_settings)
    report = None
    if recipe.report_to and is_main():
        report = MetricsReport(recipe.report_to, run_dir, out.name, recipe.model_dump(), state.iteration)
    progress = tqdm(
        total=recipe.iterations,
        initial=state.iteration,
        desc="rl",
        unit="iter",
        dynamic_ncols=True,
        disable=not is_main(),
    )
    try:
        validate_if_due()
        if report and state.iteration == 0 and state.validation:  # the start's score
            report.log({"validation": state.validation[0]}, 0)
        while state.iteration < recipe.iterations:
            torch.manual_seed(recipe.seed * 100_003 + state.iteration)
            started = time.time()
            problems = choose_problems(pool, recipe, state, rng)
            groups = rollouts(
                engine, tokenizer, problems, recipe, state, seed=recipe.seed * 1_000_003 + state.iteration * 7919
            )
            sampled = time.time()
            length_weight = length_weight_at(state.iteration, recipe)
            if not recipe.keep_optimizer_state:  # each iteration a new mirror-descent step from scratch
                if deepspeed_policy.is_deepspeed(model):
                    deepspeed_policy.reset_optimizer_state(model)
                else:
                    optimizer = new_optimizer(unwrapped(model), recipe)
            trained = train_iteration(model, tokenizer, groups, recipe, length_weight, rng, optimizer) if groups else {}
            for group in groups:
                record = state.success.setdefault(group[0]["problem_id"], [0.0, 0.0])
                record[0] += sum(r["correct"] for r in group)
                record[1] += len(group)
            samples = rollouts_of(groups)
            metrics = {
                "iteration": state.iteration + 1,
                "problems": len(groups),
                "length_weight": length_weight,
                "accuracy": sum(r["correct"] for r in samples) / max(1, len(samples)),
                "accuracy_by_level": accuracy_by_level(groups, levels),
                "mean_length": sum(r["length"] for r in samples) / max(1, len(samples)),
                # how much the k samples of a problem differ in length: the length reward's signal
                "mean_length_spread": sum(max(r["length"] for r in g) - min(r["length"] for r in g) for g in groups)
                / max(1, len(groups)),
                "pending_rollouts": len(state.pending),
                **trained,
                "sampling_seconds": round(sampled - started, 2),
                "training_seconds": round(time.time() - sampled, 2),
            }
            state.history.append(metrics)
            state.iteration += 1
            checkpoint = checkpoint_dir(run_dir, state.iteration)
            # the whole weights and moments: on every process under DDP, gathered from the shards under FSDP
            # and DeepSpeed
            weights, moments = whole_state(model, optimizer if recipe.keep_optimizer_state else None, recipe)
            if is_main():
                save_checkpoint(
                    run_dir, unwrapped(model), tokenizer, state, rng, chosen_iteration(state, recipe), weights, moments
                )
            barrier()  # the checkpoint is complete before any engine loads it
            stopping = stop_after is not None and stop_after <= state.iteration < recipe.iterations
            if not stopping:
                if recipe.rollout_weights == "group" and weights is None:  # (the model's own: it is not sharded)
                    weights = unwrapped(model).state_dict()
                engine = refresh_engine(engine, checkpoint, recipe, state.iteration, weights)
                validate_if_due()
            if is_main():
                write_logs(run_dir, state, chosen_iteration(state, recipe))
            if report:
                scored = [v for v in state.validation if v["iteration"] == state.iteration]
                report.log({"train": metrics, **({"validation": scored[0]} if scored else {})}, state.iteration)
            progress.update(1)
            progress.set_postfix(acc=f"{metrics['accuracy']:.2f}", len=f"{metrics['mean_length']:.0f}")
            if stopping:
                if is_main():
                    print(f"stopped after iteration {state.iteration} (--stop-after): resume with --resume")
                return None
    finally:
        progress.close()
        close_engine(engine)
        if report:
            report.close()
    if not is_main():
        return out
    if deepspeed_policy.deepspeed_requested():
        deepspeed_policy.load_whole_models_again()
    chosen = chosen_iteration(state, recipe)
    plot_training_curve(state.history, state.validation, chosen, run_dir / "training_curve.png")
    return publish(recipe, out, run_dir, state, chosen)


def start_processes(recipe: RLRecipe):
    """Under `accelerate launch` with more than one process: accelerate's `Accelerator`, which joins the processes
    (gloo on the CPU, NCCL on GPUs). The policy then trains under DDP (wrapped by accelerate), sharded with FSDP2
    when the launch asks for FSDP (distill/sharding.py), or in a DeepSpeed ZeRO-2/3 engine when it asks for
    DeepSpeed (distill/deepspeed_policy.py). One process: None (nothing is wrapped)."""
    if world_size() == 1:
        return None
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if deepspeed_policy.deepspeed_requested():
        if recipe.lora:  # (not tried: the frozen base stays out of ZeRO's partitions, the checkpoint's indexing not)
            raise SystemExit("distill rl under DeepSpeed trains every weight: drop lora, or launch with DDP or FSDP")
        # cpu=False on a CPU too: Accelerator(cpu=True) would silently join the processes with DDP instead
        accelerator = Accelerator(deepspeed_plugin=deepspeed_policy.deepspeed_plugin())
    else:
        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    kinds = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.FSDP, DistributedType.DEEPSPEED)
    if accelerator.distributed_type not in kinds:
        raise SystemExit(
            f"distill rl runs on DDP, FSDP or DeepSpeed (accelerate's multi-GPU, multi-CPU, FSDP or DeepSpeed), not "
            f"{accelerator.distributed_type.value}"
        )
    if accelerator.mixed_precision != "no":  # (the policy's own autocast already runs the forward in bf16 on GPUs)
        raise SystemExit(f"distill rl: launch with --mixed_precision no, not {accelerator.mixed_precision}")
    if fsdp_requested():
        check_fsdp_settings()
    if is_main():
        how = "FSDP, the policy sharded" if fsdp_requested() else accelerator.distributed_type.value
        if deepspeed_policy.deepspeed_requested():
            how = f"DeepSpeed ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
        print(f"rl on {world_size()} processes ({how}): each samples and trains on its share of every iteration")
    return accelerator


def continues(saved: RLRecipe, recipe: RLRecipe) -> bool:
    """Whether `recipe` may resume a run of `saved`: the same recipe, or the same with more iterations where the
    iteration count shapes nothing else (without the curriculum, whose schedule spans the run, and without
    consolidation iterations, which are the run's last), so that a run extended from 12 to 16 iterations is exactly
    a 16-iteration run. `merge_adapter` only shapes the output, the rollout server's fields only where the same
    samples come from, and `report_to` only where the metrics are also logged."""
    saved = saved.model_copy(
        update={key: getattr(recipe, key) for key in ("merge_adapter", *ROLLOUT_FIELDS, *LOGGING_FIELDS)}
    )
    if saved == recipe:
        return True
    extended = saved.model_copy(update={"iterations": recipe.iterations})
    spans_the_run = recipe.curriculum or recipe.consolidation_iterations
    return extended == recipe and recipe.iterations > saved.iterations and not spans_the_run


def publish(recipe: RLRecipe, out: Path, run_dir: Path, state: RunState, chosen: int) -> Path:
    """Write the selected checkpoint (iteration 0: the start model itself, with LoRA a new adapter, which changes
    nothing) as the finished model directory (with LoRA: the adapter, or the merged model)."""
    import torch
    from transformers import AutoTokenizer

    checkpoint = checkpoint_dir(run_dir, chosen) if chosen else None
    if chosen == 0:
        rule = describe_rule(recipe.selection_tolerance, recipe.selection_rule)
        print(f"warning: no checkpoint beat the start by the selection rule ({rule}); the output is the start")
        torch.manual_seed(recipe.seed)
    model = load_policy(recipe, checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint or recipe.model_path)
    seconds = sum(h["sampling_seconds"] + h["training_seconds"] for h in state.history)
    with atomic_model_dir(out) as temporary:
        lora = save_weights(model, temporary, recipe)
        tokenizer.save_pretrained(temporary)
        write_card(
            temporary,
            new_card(
                name=out.name,
                method="rl-opmd",
                parents=[Path(recipe.model).name],
                recipe=recipe.model_dump(),
                role="short",
                training={
                    "iterations": state.iteration,
                    "selected_iteration": chosen,
                    "selection_rule": describe_rule(recipe.selection_tolerance, recipe.selection_rule),
                    "validation": state.validation,
                    "history": state.history,
                    "seconds": round(seconds, 1),
                },
                **lora,
            ),
        )
    print(f"wrote {out} (iteration {chosen} of {state.iteration}); metrics in {run_dir / 'metrics.jsonl'}")
    return out


def plot_training_curve(history: list[dict], validation: list[dict], chosen: int | None, path: Path) -> None:
    """Sample accuracy and length per iteration, the validation scores beside them, the kept checkpoint marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    draw_training_curve(axes, history, validation, chosen, label=None)
    figure.tight_layout()
    save_figure_atomic(figure, path, dpi=110)
    plt.close(figure)


def draw_training_curve(axes, history: list[dict], validation: list[dict], chosen: int | None, label, color=None):
    """Draw one run on three axes (accuracy, tokens, reward); shared by the per-run plot and the seeds plot."""
    iterations = [h["iteration"] for h in history]
    scored = [v["iteration"] for v in validation]
    panels = (
        ("accuracy", "accuracy", "accuracy (dots: samples at T=1; line: validation, greedy)"),
        ("mean_length", "reasoning_tokens", "tokens (dots: sample length; line: validation reasoning)"),
        ("mean_reward", None, "mean reward"),
    )
    for axis, (key, validation_key, title) in zip(axes, panels):
        axis.plot(iterations, [h.get(key, math.nan) for h in history], "o", ms=3, alpha=0.5, color=color)
        if validation_key and validation:
            line = axis.plot(scored, [v[validation_key] for v in validation], "-", color=color, label=label)[0]
            if chosen is not None and chosen in scored:
                value = validation[scored.index(chosen)][validation_key]
                axis.plot([chosen], [value], "*", ms=12, color=line.get_color())
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
    if label is not None:
        axes[0].legend(fontsize=8)
