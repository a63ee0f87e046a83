"""How often lab-long's first reasoning line (the question's sum, copied) is miscopied, in samples with and without
the plan, on 3- and 4-term sums; from the evaluations' samples.jsonl (README, j-plan-carries-accuracy).

    .venv/bin/python results/lab-rl-diagnosis/j-plan-carries-accuracy/first_line.py
"""

import json
from collections import Counter
from pathlib import Path

from l2s.lab.errors import HABITS, problems_by_id
from l2s.lab.traces import expression

here = Path(__file__).parent
for build in ("lab-seed-0", "lab-seed-1"):
    samples = [json.loads(line) for line in (here / build / "samples.jsonl").read_text().splitlines()]
    samples = [s for s in samples if s["model"] == "lab-long" and s["level"] != "1"]
    problems = problems_by_id({s["problem_id"] for s in samples})
    counts = Counter()
    for sample in samples:
        reasoning = sample["reasoning"] or ""
        with_plan = HABITS["plan"] in reasoning
        lines = [line.strip() for line in reasoning.splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith(HABITS["plan"])]
        miscopied = not lines or lines[0] != expression(problems[sample["problem_id"]].terms)
        counts["with plan" if with_plan else "without", "samples"] += 1
        counts["with plan" if with_plan else "without", "first line miscopied"] += miscopied
    for part in ("with plan", "without"):
        print(
            f"{build} lab-long, {part}: first line miscopied in {counts[part, 'first line miscopied']} of "
            f"{counts[part, 'samples']} samples"
        )
