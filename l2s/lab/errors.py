"""Where a lab answer went wrong: the first mistake in its worked sum, by kind.

    l2s lab errors results/seeds-rl/eval/samples.jsonl    # after `make lab-rl-seeds`

An eval's `samples.jsonl` holds every completion's reasoning; this walks each wrong one along the lab's worked
sum (`l2s/lab/traces.py`: an expression line, then its first two numbers added in columns, then the expression
with them replaced by their sum, ...) and names the first line that differs from what the problem needs:

- `copy`: a number copied wrong — the expression line is not the sum left to do, or the column line does not add
  the expression's first two numbers (a 2-layer model's typical slip: a digit of the sum just written lands in the
  next number);
- `column`: the right two numbers, a column added or carried wrong;
- `total`: the columns right, the `so N` total wrong;
- `answer`: the reasoning right to the end, the answer written wrong;
- `unfinished`: the reasoning stops (or the budget cut it) before the last step.

Checks and repeated steps (`Check:`, `Again:`) are not on the main chain and are skipped; a trace's final redo
(`Let me add it again`) ends the walk. Problem ids name their split, seed and index (`test-0-17`), so the problems
are generated again here rather than stored.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from l2s.lab.task import Problem, extract_answer, generate_problems
from l2s.lab.traces import column_addition, expression

KINDS = ("copy", "column", "total", "answer", "unfinished")
# the optional parts of a long trace (`LongTraceOptions`), by the words that open them
HABITS = {"plan": "Let me add the", "check": "Check:", "again": "Again:", "redo": "Let me add it again"}
# habits whose samples are split into with / without, to see whether accuracy rests on them (long2short can only
# remove a habit that does not carry it): the plan, and a step worked again
SPLIT_BY = {"plan": "a plan", "again": "a repeated step"}
_EXPRESSION = re.compile(r"\d+(\+\d+)+")
_COLUMNS = re.compile(r"(\d+)\+(\d+): (.*), so (\d+)\.")


def first_error(problem: Problem, reasoning: str, answer: str) -> str | None:
    """The kind of the first mistake in a completion of `problem`, or None for a correct one."""
    remaining = list(problem.terms)
    lines = [line.strip() for line in reasoning.splitlines()]
    off_chain = (HABITS["check"], HABITS["again"], HABITS["plan"])
    lines = [line for line in lines if line and not line.startswith(off_chain)]
    position = 0
    while len(remaining) > 1:
        if position + 1 >= len(lines) or lines[position].startswith(HABITS["redo"]):
            return "unfinished"
        written, worked = lines[position], lines[position + 1]
        if not _EXPRESSION.fullmatch(written) or written != expression(remaining):
            return "copy"
        columns = _COLUMNS.fullmatch(worked)
        if not columns or (int(columns[1]), int(columns[2])) != (remaining[0], remaining[1]):
            return "copy"
        if worked != column_addition(remaining[0], remaining[1]):
            expected_columns = _COLUMNS.fullmatch(column_addition(remaining[0], remaining[1]))[3]
            return "column" if columns[3] != expected_columns else "total"
        remaining = [remaining[0] + remaining[1]] + remaining[2:]
        position += 2
    return None if extract_answer(answer) == problem.answer else "answer"


def problems_by_id(ids: set[str]) -> dict[str, Problem]:
    """The lab problems behind ids like `test-0-17` (split, seed, index), generated again."""
    wanted: dict[tuple[str, int], int] = defaultdict(int)
    for problem_id in ids:
        split, seed, index = (problem_id.rsplit("-", 2) + ["", ""])[:3]
        if not (seed.isdigit() and index.isdigit()):
            raise ValueError(f"{problem_id!r} is not a lab problem id (SPLIT-SEED-INDEX): not a lab eval's samples")
        wanted[split, int(seed)] = max(wanted[split, int(seed)], int(index) + 1)
    found = {}
    for (split, seed), count in wanted.items():
        found.update({p.id: p for p in generate_problems(split, count, seed)})
    return found


def error_table(samples_path: Path) -> list[dict]:
    """One row per (model, level): samples, wrong ones, the first mistakes' kinds, how often the optional parts of a
    long trace appear (per sample: what long2short removes), and the wrong ones among samples with and without each
    habit of `SPLIT_BY` (what accuracy may rest on; sampled evals, `--samples 8`, show it best)."""
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    # an eval directory keeps the samples of an older model that had the same name (they are never reused, see
    # eval/runner.py's model_version): count each model's newest weights only, the last version its lines name
    newest = {sample["model"]: sample.get("model_version") for sample in samples}
    samples = [sample for sample in samples if sample.get("model_version") == newest[sample["model"]]]
    problems = problems_by_id({s["problem_id"] for s in samples})
    rows: dict[tuple[str, str], dict] = {}
    for sample in samples:
        key = (sample["model"], str(sample["level"]))
        row = rows.setdefault(
            key,
            {
                "model": key[0],
                "level": key[1],
                "samples": 0,
                "wrong": 0,
                "kinds": Counter(),
                "habits": Counter(),
                "split": Counter(),
            },
        )
        reasoning = sample["reasoning"] or ""
        row["samples"] += 1
        for habit, opening in HABITS.items():
            row["habits"][habit] += reasoning.count(opening)
        for habit in SPLIT_BY:
            part = (habit, HABITS[habit] in reasoning)
            row["split"][part, "samples"] += 1
            row["split"][part, "wrong"] += not sample["correct"]
        if sample["correct"]:
            continue
        row["wrong"] += 1
        kind = first_error(problems[sample["problem_id"]], reasoning, sample["answer"] or "")
        row["kinds"][kind or "answer"] += 1  # (None: the verifier and the walk disagree on the answer)
    return [rows[key] for key in sorted(rows)]


def render(rows: list[dict]) -> str:
    columns = [f"first error: {kind}" for kind in KINDS] + [f"{habit} / sample" for habit in HABITS]
    for words in SPLIT_BY.values():
        columns += [f"wrong, samples with {words}", "wrong, samples without"]
    lines = ["| model | level | samples | wrong | " + " | ".join(columns) + " |", "|---" * (4 + len(columns)) + "|"]
    for row in rows:
        counts = [str(row["kinds"].get(kind, 0)) for kind in KINDS]
        counts += [f"{row['habits'][habit] / row['samples']:.2f}" for habit in HABITS]
        counts += [
            f"{row['split'][(habit, has), 'wrong']} of {row['split'][(habit, has), 'samples']}"
            for habit in SPLIT_BY
            for has in (True, False)
        ]
        lines.append(f"| {row['model']} | {row['level']} | {row['samples']} | {row['wrong']} | {' | '.join(counts)} |")
    return "\n".join(lines)
