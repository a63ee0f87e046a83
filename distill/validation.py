"""Model selection for RL on a validation split (never the test split).

During a run the policy is scored greedily on a fixed set of validation problems every few iterations (and at
the start, so the rule has something to compare with). The checkpoint kept is chosen by one stated rule, among
the scored checkpoints whose validation accuracy is within `tolerance` of the start's:

    fewest_tokens: the one with the fewest mean reasoning tokens (ties: the more accurate, then the earlier);
    aes:           of those no longer than the start, the one with the highest accuracy-efficiency score against
                   it (SPEC §5: ΔL + 3·ΔA, or ΔL + 5·ΔA when accuracy fell; ties: fewer tokens, then the earlier).

`aes` is the lab recipe's: once a run has reached its shortest, checkpoints a few iterations apart sit at the same
length but differ by points of greedy accuracy (copy errors that come and go with small weight changes), and
`fewest_tokens` would pick among them by a tenth of a token. `aes` prices a point of accuracy lost at 5% of the
length (a point gained at 3%).

The start is always eligible, so a run that never shortens without losing accuracy selects iteration 0 — the
model it started from — and says so, rather than publishing a worse model.

This is how k1.5 and RL practice pick a checkpoint: the last iteration is not necessarily the best, and an
RL run that drifts late still yields the model it had before it drifted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from eval.metrics import aes
from l2s.tasks import PromptPolicy, TaskProblem, load_task, split_holdout, without

SelectionRule = Literal["fewest_tokens", "aes"]
VALIDATION_SEED = 0  # the same validation problems for every run and seed, so their scores compare


@dataclass(frozen=True)
class Score:
    iteration: int  # 0 = the model the run started from
    accuracy: float
    reasoning_tokens: float  # mean over the validation problems, greedy
    accuracy_by_level: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


HOLDOUT_FRACTION = 0.05  # of a task without a validation split of its own, held out from training


def validation_split(recipe) -> tuple[list[TaskProblem], list[TaskProblem]]:
    """(the problems RL trains on, the validation problems it is scored on), never overlapping:

    - the lab: its train split, and `validation_problems` of its validation split (disjoint by hash);
    - `validation_task` given: the task's train split, and that task's validation split minus any question the
      training pool also holds;
    - otherwise: the task's train split, less a hashed 5% hold-out, which is the validation set."""
    pool = load_task(recipe.task, split="train", count=recipe.pool_size, seed=recipe.seed + 202)
    count = recipe.validation_problems
    if not count:
        return pool, []
    if recipe.validation_task:
        held = without(load_task(recipe.validation_task, split="validation", seed=VALIDATION_SEED), pool)
    elif recipe.task.partition(":")[0] == "lab":
        held = load_task("lab", split="validation", count=count, seed=VALIDATION_SEED)
    else:
        pool, held = split_holdout(pool, HOLDOUT_FRACTION, salt="validation")
    if not held:
        raise ValueError("no validation problems left: give a validation_task or more problems")
    return pool, held[:count]


def score_policy(
    engine, problems: list[TaskProblem], iteration: int, max_tokens: int, prompt: PromptPolicy = PromptPolicy()
) -> Score:
    """Greedy accuracy and mean reasoning tokens of the engine's current weights on `problems` (under `accelerate
    launch`, each process's engine answers its share, and every process gets the whole score)."""
    from l2s.distributed import sharded
    from l2s.generation import generate

    def answer(share: list[TaskProblem]) -> list:
        return generate(engine, [prompt.messages(p.question) for p in share], max_tokens=max_tokens, progress=False)

    samples = [group[0] for group in sharded(answer, problems)]
    correct = [
        sample.finish_reason == "stop" and problem.is_correct(sample.answer_text)
        for sample, problem in zip(samples, problems)
    ]
    levels = sorted({p.level for p in problems})
    by_level = {
        level: sum(c for c, p in zip(correct, problems) if p.level == level)
        / sum(1 for p in problems if p.level == level)
        for level in levels
    }
    return Score(
        iteration=iteration,
        accuracy=sum(correct) / len(problems),
        reasoning_tokens=sum(s.reasoning_tokens for s in samples) / len(problems),
        accuracy_by_level=by_level,
    )


def select(scores: list[Score], tolerance: float, rule: SelectionRule = "fewest_tokens") -> Score:
    """The rule in the module docstring. `scores[0]` must be the start's (iteration 0)."""
    if not scores or scores[0].iteration != 0:
        raise ValueError("selection needs the start's score first")
    start = scores[0]
    floor = start.accuracy - tolerance - 1e-9
    eligible = [s for s in scores if s.accuracy >= floor]
    if rule == "aes":  # a long2short run never hands back a model longer than its start
        return min(
            [s for s in eligible if s.reasoning_tokens <= start.reasoning_tokens],
            key=lambda s: (
                -(aes(s.accuracy, s.reasoning_tokens, start.accuracy, start.reasoning_tokens) or 0.0),
                s.reasoning_tokens,
                s.iteration,
            ),
        )
    return min(eligible, key=lambda s: (s.reasoning_tokens, -s.accuracy, s.iteration))


def describe_rule(tolerance: float, rule: SelectionRule) -> str:
    """The rule in words, for the model card."""
    within = f"within {tolerance:.0%} validation accuracy of the start"
    if rule == "aes":
        return f"highest validation AES against the start (dL + 3dA, or dL + 5dA if accuracy fell) {within}"
    return f"fewest validation reasoning tokens {within}"
