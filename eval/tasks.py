"""Evaluation tasks: `lab` (the lab's test split), `lab:LEVEL` (one difficulty), `jsonl:PATH` (math sets in the
usual `{question, answer}` form, answers checked with math-verify)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from l2s.lab.task import LEVELS, generate_problems, is_correct


@dataclass(frozen=True)
class EvalProblem:
    id: str
    question: str
    answer: str
    level: str  # difficulty label ("1".."4" for the lab; the record's `level` or "all" for jsonl)
    verify: Callable[[str], bool]  # answer text (after the reasoning) -> correct?


def _math_verify(reference: str) -> Callable[[str], bool]:
    from math_verify import parse, verify

    gold = parse(reference if "$" in reference or "\\" in reference else f"${reference}$")

    def check(answer_text: str) -> bool:
        try:
            return bool(verify(gold, parse(answer_text)))
        except Exception:  # math-verify raises on unparseable text: that answer is wrong, not an error
            return False

    return check


def load_task(spec: str, num_problems: int | None = None, seed: int = 0) -> list[EvalProblem]:
    kind, _, argument = spec.partition(":")
    if kind == "lab":
        levels = None
        if argument:
            if not argument.isdigit() or int(argument) not in LEVELS:
                raise ValueError(f"lab level must be one of {sorted(LEVELS)}, not {argument!r}")
            levels = (int(argument),)
        problems = generate_problems("test", num_problems or 500, seed=seed, levels=levels)
        return [
            EvalProblem(
                id=p.id,
                question=p.question,
                answer=str(p.answer),
                level=str(p.level),
                verify=lambda text, p=p: is_correct(text, p),
            )
            for p in problems
        ]
    if kind == "jsonl":
        path = Path(argument)
        if not path.is_file():
            raise ValueError(f"no such file: {argument}")
        problems = []
        for number, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            record = json.loads(line)
            if "question" not in record or "answer" not in record:
                raise ValueError(f"{path.name} line {number + 1}: needs 'question' and 'answer'")
            answer = str(record["answer"])
            problems.append(
                EvalProblem(
                    id=str(record.get("id", number)),
                    question=record["question"],
                    answer=answer,
                    level=str(record.get("level", "all")),
                    verify=_math_verify(answer),
                )
            )
        return problems[:num_problems] if num_problems else problems
    raise ValueError(f"unknown task {spec!r}: use lab, lab:LEVEL or jsonl:PATH")
