"""Locust users streaming chat completions from a long2short (or any OpenAI-compatible) server.

    locust -f clients/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s

Each request picks a variant and a budget from the configured mix and a prompt from the lab task. Besides
locust's own request statistics it records, per variant, as custom entries (request type `metric`, so they
land in locust's CSV): time to first token, time to first answer token, inter-token latency (ms), and
reasoning and answer tokens (as the "response time" column of their entries). 429/503 refusals are counted
as their own entries, apart from real failures.

Settings (environment variables): L2S_VARIANTS="lab-long:3,lab-short:1" (weights), L2S_BUDGETS="none,16,64",
L2S_MAX_REQUESTS (each user stops after this many; 0 = no cap), L2S_API_KEY.
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, events, task

from l2s.lab.task import generate_problems

PROMPTS = [p.question for p in generate_problems("validation", 200, seed=1)]


def _weighted(spec: str) -> list[tuple[str, float]]:
    items = []
    for part in filter(None, spec.split(",")):
        name, _, weight = part.partition(":")
        items.append((name.strip(), float(weight or 1)))
    return items


VARIANTS = _weighted(os.environ.get("L2S_VARIANTS", "lab-long:1,lab-short:1"))
BUDGETS = [None if b.strip() == "none" else int(b) for b in os.environ.get("L2S_BUDGETS", "none,16,64").split(",")]
MAX_REQUESTS = int(os.environ.get("L2S_MAX_REQUESTS", "0"))


def _metric(name: str, value: float) -> None:
    events.request.fire(
        request_type="metric", name=name, response_time=value, response_length=0, exception=None, context={}
    )


class StreamingChatUser(HttpUser):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        self.made = 0
        key = os.environ.get("L2S_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @task
    def stream_chat(self) -> None:
        if MAX_REQUESTS and self.made >= MAX_REQUESTS:
            self.stop()
            return
        self.made += 1
        variant = random.choices([v for v, _ in VARIANTS], [w for _, w in VARIANTS])[0]
        budget = random.choice(BUDGETS)
        body = {
            "model": variant,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 1.0,
            "max_tokens": 768,
        }
        if budget is not None:
            body["thinking_token_budget"] = budget
        label = f"{variant} budget={budget}"
        started = time.perf_counter()
        first = first_answer = last = None
        gaps, usage = [], None
        with self.client.post(
            "/v1/chat/completions", json=body, headers=self.headers, stream=True, name=label, catch_response=True
        ) as response:
            if response.status_code in (429, 503):
                response.success()  # a refusal, not a failure: counted apart
                _metric(f"refused {response.status_code}", 0)
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            for line in response.iter_lines():
                if not line or not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    response.failure(chunk["error"].get("message", "stream error"))
                    return
                now = time.perf_counter()
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta", {})
                    if delta.get("reasoning_content") or delta.get("content"):
                        if first is None:
                            first = now
                        elif last is not None:
                            gaps.append(now - last)
                        last = now
                    if delta.get("content") and first_answer is None:
                        first_answer = now
            response.success()
        if first is not None:
            _metric(f"{variant} ttft_ms", 1000 * (first - started))
        if first_answer is not None:
            _metric(f"{variant} first_answer_ms", 1000 * (first_answer - started))
        if gaps:
            _metric(f"{variant} inter_token_ms", 1000 * sum(gaps) / len(gaps))
        if usage:
            reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
            _metric(f"{variant} reasoning_tokens", reasoning)
            _metric(f"{variant} answer_tokens", usage["completion_tokens"] - reasoning)
