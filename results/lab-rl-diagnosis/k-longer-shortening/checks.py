"""Wrong answers of 3- and 4-term samples that open with the plan, split by whether they write a check:
`python checks.py` (reads j's sampled validation evaluations; writes checks.txt). `l2s lab errors` splits by the plan
and by repeated steps, each alone; on lab seed 1's build the samples without the plan are wrong about half the time
and rarely check, so the check's own effect shows only among samples that have the plan."""

import collections
import json
from pathlib import Path

from l2s.lab.errors import HABITS

HERE = Path(__file__).parent
lines = []
for build in ["lab-seed-1", "lab-seed-0"]:
    samples = HERE.parent / "j-plan-carries-accuracy" / build / "samples.jsonl"
    counts = collections.Counter()
    for sample in map(json.loads, samples.read_text().splitlines()):
        reasoning = sample.get("reasoning") or ""
        if sample["level"] == "1" or HABITS["plan"] not in reasoning:
            continue
        check = "check" if HABITS["check"] in reasoning else "no check"
        key = (sample["model"], {"2": "3-term", "3": "4-term"}[sample["level"]], check)
        counts[key, "samples"] += 1
        counts[key, "wrong"] += not sample["correct"]
    for model, terms, check in sorted({key for key, _ in counts}):
        n, wrong = counts[(model, terms, check), "samples"], counts[(model, terms, check), "wrong"]
        lines.append(f"{build:11} {model:20} {terms:7} {check:9} {wrong:4} of {n:4} wrong ({wrong / n:.1%})")
(HERE / "checks.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
