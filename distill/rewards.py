"""Rewards of the RL method (SPEC §3.1), as plain functions of one problem's k samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def length_rewards(lengths: Sequence[int], correct: Sequence[bool]) -> list[float]:
    """k1.5's length reward, computed within one problem's k samples (lengths in tokens):

        λ_j = 0.5 − (len_j − min_len) / (max_len − min_len)     (0 for all when max_len = min_len)
        reward_j = λ_j if correct_j else min(0, λ_j)

    Short correct answers are rewarded, long ones penalised; a wrong answer is never rewarded for brevity.
    """
    if len(lengths) != len(correct):
        raise ValueError("lengths and correct must have the same size")
    if not lengths:
        return []
    shortest, longest = min(lengths), max(lengths)
    if longest == shortest:
        return [0.0] * len(lengths)
    rewards = []
    for length, is_correct in zip(lengths, correct):
        lam = 0.5 - (length - shortest) / (longest - shortest)
        rewards.append(lam if is_correct else min(0.0, lam))
    return rewards


def total_rewards(
    lengths: Sequence[int], correct: Sequence[bool], length_weight: float, only_all_correct: bool = False
) -> list[float]:
    """r_j + w · length_reward_j (w = 0 during the warm-up).

    With `only_all_correct`, a group gets the length reward only when all its k samples are correct: a problem
    the policy still gets wrong sometimes is trained on correctness alone, so the re-checks that hard problems
    need are not traded for length (easy problems, always right, are shortened as before)."""
    gated = only_all_correct and not all(correct)
    bonus = length_rewards(lengths, correct) if length_weight and not gated else [0.0] * len(lengths)
    return [float(c) + length_weight * b for c, b in zip(correct, bonus)]


def baseline(rewards: Sequence[float], tau: float, exact: bool = False) -> float:
    """τ·log Z estimated from the k samples: their mean reward (k1.5's practical choice), or with `exact`,
    τ·log((1/k)·Σ_j exp(r_j/τ)) (computed stably)."""
    if not rewards:
        raise ValueError("no rewards")
    if not exact:
        return sum(rewards) / len(rewards)
    top = max(rewards)
    return top + tau * math.log(sum(math.exp((r - top) / tau) for r in rewards) / len(rewards))
