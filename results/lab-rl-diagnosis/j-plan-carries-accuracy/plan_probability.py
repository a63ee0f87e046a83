"""P(plan): the probability a model gives the lab's plan line ("Let me add the") as the first words of its
reasoning, averaged over 200 validation prompts (the test split is not used). Written to plan_probability.json.

    .venv/bin/python results/lab-rl-diagnosis/j-plan-carries-accuracy/plan_probability.py MODEL_DIR [MODEL_DIR ...]
"""

import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from l2s.generation import chat_prompt_ids
from l2s.lab.errors import HABITS
from l2s.lab.task import generate_problems
from l2s.reasoning import DEFAULT_START

problems = generate_problems("validation", 200, seed=0)
results = {}
for model_dir in sys.argv[1:]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    plan = tokenizer(HABITS["plan"], add_special_tokens=False).input_ids
    probabilities = []
    for problem in problems:
        prompt = chat_prompt_ids(tokenizer, problem.question)
        if not tokenizer.decode(prompt).rstrip().endswith(DEFAULT_START):  # (the lab's template opens the reasoning)
            prompt += tokenizer(DEFAULT_START, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(torch.tensor([prompt + plan])).logits[0].float()
        log_probs = torch.log_softmax(logits, -1)
        start = len(prompt) - 1
        probabilities.append(math.exp(sum(log_probs[start + i, token].item() for i, token in enumerate(plan))))
    results[model_dir] = {"mean": sum(probabilities) / len(probabilities), "min": min(probabilities),
                          "max": max(probabilities)}  # fmt: skip
    print(model_dir, results[model_dir], flush=True)
out = Path(__file__).with_name("plan_probability.json")
out.write_text(json.dumps({"prompts": len(problems), "split": "validation", "models": results}, indent=1) + "\n")
