"""Chain-of-thought traces for the lab task, in three styles.

- `long`: the expression rewritten step by step, every step worked column by column (ones first, the way a
  tiny model can get it right), with optional parts drawn at random per trace, so that long traces of one
  problem differ in length the way real long-CoT samples do: a plan announced up front, after a step a check
  (its two numbers re-added in the other order) and the step worked again, and at the end the whole sum done
  again to be sure. The shortest long trace (no optional part) is what the long2short methods have to find.
- `short`: the essential steps only, each sum written directly (`587+744+728+912 = 1331+728+912 = ...`).
- `none`: no reasoning, the answer alone.

Each completion is `<think>REASONING</think>The answer is N.` (SPEC §2).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from l2s.lab.task import Problem
from l2s.reasoning import DEFAULT_END, DEFAULT_START

STYLES = ("long", "short", "none")


@dataclass(frozen=True)
class LongTraceOptions:
    """Probabilities of the optional parts of a long trace (each drawn independently). The lab's base learns
    every part from occasional ones; the long model's fine-tune makes the plan, the checks and the per-step
    repeats habits (p > 0.5, configs/lab.yaml), because greedy decoding follows the mode: a long model that
    checks only sometimes decodes greedily to its shortest trace and leaves long2short nothing to remove.
    The final redo stays occasional: it copies the question from hundreds of tokens back, which a 2-layer
    model gets wrong often enough on 4-term sums to cost accuracy (samples that redo are more often wrong)."""

    plan: float = 0.4  # announce the plan (no digits: a restated number is one more chance to copy it wrong)
    check: float = 0.35  # after a step: re-add its two numbers in the other order
    again: float = 0.35  # after a step: work it once more, the same way
    redo: float = 0.3  # at the end: add everything again from the start, to be sure


def column_addition(left: int, right: int) -> str:
    """`717+198: 7+8=15, 1+9+1=11, 7+1+1=9, so 915.` — ones column first, carries written into the sum."""
    width = max(len(str(left)), len(str(right)))
    left_digits, right_digits = str(left).zfill(width)[::-1], str(right).zfill(width)[::-1]
    carry, columns = 0, []
    for a, b in zip(left_digits, right_digits):
        total = int(a) + int(b) + carry
        columns.append(f"{a}+{b}+1={total}" if carry else f"{a}+{b}={total}")
        carry = total // 10
    return f"{left}+{right}: " + ", ".join(columns) + f", so {left + right}."


def expression(terms: list[int]) -> str:
    return "+".join(map(str, terms))


def worked_sum(terms: tuple[int, ...], rng: random.Random | None, check: float = 0.0, again: float = 0.0) -> list[str]:
    """The expression rewritten one step at a time, each step worked in columns:

        587+744+728+912
        587+744: 7+4=11, 8+4+1=13, 5+7+1=13, so 1331.
        1331+728+912
        ...

    Each line copies what it needs from the line just above it, which a tiny model learns quickly.
    """
    remaining, lines = list(terms), []
    while len(remaining) > 1:
        left, right = remaining[0], remaining[1]
        lines.append(expression(remaining))
        lines.append(column_addition(left, right))
        if rng is not None and rng.random() < check:
            lines.append("Check: " + column_addition(right, left) + " Right.")
        if rng is not None and rng.random() < again:
            lines.append("Again: " + column_addition(left, right))
        remaining = [left + right] + remaining[2:]
    return lines


def long_reasoning(problem: Problem, rng: random.Random, options: LongTraceOptions = LongTraceOptions()) -> str:
    lines = []
    if rng.random() < options.plan:
        lines.append(f"Let me add the {len(problem.terms)} numbers one step at a time.")
    lines.extend(worked_sum(problem.terms, rng, options.check, options.again))
    if rng.random() < options.redo:
        lines.append("Let me add it again to be sure.")
        lines.extend(worked_sum(problem.terms, None))
        lines.append(f"Same: {problem.answer}.")
    return "\n".join(lines)


def short_reasoning(problem: Problem) -> str:
    """`587+744+728+912 = 1331+728+912 = 2059+912 = 2971`: each step's sum written directly."""
    remaining, parts = list(problem.terms), []
    while len(remaining) > 1:
        parts.append(expression(remaining))
        remaining = [remaining[0] + remaining[1]] + remaining[2:]
    parts.append(str(remaining[0]))
    return " = ".join(parts)


def final_answer(problem: Problem) -> str:
    return f"The answer is {problem.answer}."


def completion(
    problem: Problem,
    style: str,
    rng: random.Random,
    options: LongTraceOptions = LongTraceOptions(),
    markers: tuple[str, str] = (DEFAULT_START, DEFAULT_END),
) -> str:
    """The assistant's whole output for `problem` in `style` (without the end-of-sequence token)."""
    if style == "long":
        reasoning = long_reasoning(problem, rng, options)
    elif style == "short":
        reasoning = short_reasoning(problem)
    elif style == "none":
        reasoning = ""
    else:
        raise ValueError(f"unknown trace style {style!r}; expected one of {STYLES}")
    return f"{markers[0]}{reasoning}{markers[1]}{final_answer(problem)}"
