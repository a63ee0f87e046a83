"""`l2s serve --ray` on a local Ray instance: lab-long as two replicas, lab-short as one. The single-process
server's checks of reasoning fields, budgets, efforts and `auto` run against it unchanged; requests spread over
both lab-long replicas; a replica killed during a burst costs only the requests it was running, Ray brings it
back, and /health says when a variant has no live replica."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from l2s.local_server import stop_server, wait_healthy
from tests import test_server as single_process
from tests.conftest import start_server, wait_for

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "What is 33+22+67+48?"}]
tokenizer = single_process.tokenizer  # the fixture, for the single-process checks


@pytest.fixture(scope="module")
def ray_server(lab_models: Path, tmp_path_factory):
    engine = {"kv_cache_gib": 1, "max_num_seqs": 64}
    config = {
        "variants": [
            {"name": "lab-long", "path": str(lab_models / "lab-long"), "engine": engine,
             "ray": {"replicas": 2, "num_cpus": 0.5}},
            {"name": "lab-short", "path": str(lab_models / "lab-short"), "engine": engine,
             "ray": {"replicas": 1, "num_cpus": 0.5}},
        ]
    }  # fmt: skip
    path = tmp_path_factory.mktemp("ray") / "server.yaml"
    path.write_text(yaml.safe_dump(config))
    # --models-dir: an empty one, so that only these two are served
    empty = tmp_path_factory.mktemp("no-models")
    process, base_url, log_path = start_server(empty, "--config", str(path), "--ray", log_name="ray-server")
    try:
        wait_healthy(base_url, process, timeout=900)
        # healthy once each variant has a replica: wait for all three
        wait_for(lambda: sum(_metric(base_url, "l2s_live_replicas").values()) == 3, "every replica", timeout=600)
    except Exception:
        stop_server(process)
        raise RuntimeError("the Ray server failed to start:\n" + log_path.read_text()[-4000:]) from None
    yield base_url
    assert stop_server(process) == 0
    assert not _replica_pids(), "replica processes outlived the server"


@pytest.fixture(scope="module")
def ray_client(ray_server: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{ray_server}/v1", api_key="unused", max_retries=0, timeout=120)


def _replica_pids(variant: str | None = None) -> set[int]:
    """The processes of Ray Serve replicas (of one variant), by the title Ray gives an actor's process."""
    wanted = f"ServeReplica:long2short:{variant}" if variant else "ServeReplica:long2short:lab-"
    pids = set()
    for process in psutil.process_iter(["cmdline"]):
        if any(wanted in part for part in process.info["cmdline"] or []):
            pids.add(process.pid)
    return pids


def _metric(base_url: str, name: str, **labels: str) -> dict[tuple, float]:
    """A metric's samples whose labels include `labels`, keyed by their label values."""
    found = {}
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} ([0-9.e+-]+)$", httpx.get(f"{base_url}/metrics").text, re.M):
        sample = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(sample.get(key) == value for key, value in labels.items()):
            found[tuple(sorted(sample.items()))] = float(match.group(2))
    return found


def test_the_single_process_checks_pass_on_ray(ray_client, ray_server, tokenizer):
    single_process.test_health_models_and_answer(ray_client, ray_server)
    single_process.test_budget_is_a_hard_cap_under_concurrency(ray_client, tokenizer, 8)
    single_process.test_stream_and_whole_agree(ray_client)
    single_process.test_include_reasoning_false_hides_but_counts(ray_client)
    single_process.test_effort_levels_are_nested_and_auto_names_the_variant(ray_client)
    for kwargs, error_class, code in single_process.BAD_REQUESTS:
        single_process.test_bad_input_gets_openai_errors_and_server_keeps_serving(ray_client, kwargs, error_class, code)


def test_requests_spread_over_replicas(ray_server):
    """200 mixed requests (both variants, streamed and whole, budgets, efforts, auto), every one answered."""

    async def burst():
        async with httpx.AsyncClient(base_url=ray_server, timeout=120) as http:
            return await asyncio.gather(*(_request(http, i) for i in range(200)))

    before = _metric(ray_server, "l2s_replica_requests_total", variant="lab-long", status="200")
    outcomes = asyncio.run(burst())
    assert [outcome for outcome in outcomes if outcome != "ok"] == []
    after = _metric(ray_server, "l2s_replica_requests_total", variant="lab-long", status="200")
    served = {key: after[key] - before.get(key, 0) for key in after}
    print("lab-long requests per replica:", sorted(served.values()))
    assert len([count for count in served.values() if count >= 10]) == 2, served
    assert _metric(ray_server, "l2s_live_replicas", variant="lab-long") == {(("variant", "lab-long"),): 2.0}


def test_a_killed_replica_costs_only_its_running_requests(ray_server):
    """SIGKILL one lab-long replica's process in a burst: every request ends (no hang): answered, or — only
    those running on that replica — a 503 with Retry-After, or an error event and [DONE]. Ray starts another
    replica; lab-short's only replica killed, /health names it until it is back."""
    victims = _replica_pids("lab-long")
    assert len(victims) == 2
    victim = min(victims)

    async def burst():
        async with httpx.AsyncClient(base_url=ray_server, timeout=120) as http:
            started: list[int] = []  # the streamed requests generating on a replica
            requests = [
                asyncio.create_task(_request(http, i, model="lab-long", tokens=300, started=started)) for i in range(48)
            ]
            # half of the 24 streams running: both replicas are generating (a kill before the victim produced
            # anything costs nothing: those requests are retried on the other replica, and nothing is tested)
            for _ in range(600):
                if len(started) >= 12:
                    break
                await asyncio.sleep(0.1)
            psutil.Process(victim).send_signal(signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*requests), 180)

    failed_before = _metric(ray_server, "l2s_replica_requests_total", variant="lab-long", status="503")
    outcomes = asyncio.run(burst())
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    print(f"killed a lab-long replica during 48 requests: {len(failures)} ended with a 503 or an error event")
    assert set(failures) <= {"503", "error event"}, failures
    assert failures, "the kill ended no request: it landed after the burst (nothing was tested)"
    failed = {
        key: value - failed_before.get(key, 0)
        for key, value in _metric(ray_server, "l2s_replica_requests_total", variant="lab-long", status="503").items()
    }
    failed = {key: value for key, value in failed.items() if value}
    assert sum(failed.values()) == len(failures) and len(failed) <= 1, failed  # all on the killed replica
    wait_for(lambda: len(_replica_pids("lab-long") - {victim}) == 2, "Ray to replace the replica", timeout=300)
    wait_for(lambda: httpx.get(f"{ray_server}/health").status_code == 200, "health", timeout=300)
    assert asyncio.run(_one(ray_server, "lab-long")) == "ok"

    (short,) = _replica_pids("lab-short")

    async def only_replica_killed():
        async with httpx.AsyncClient(base_url=ray_server, timeout=300) as http:
            requests = [
                asyncio.create_task(_request(http, i, model="lab-short", tokens=300, ignore_eos=True)) for i in range(8)
            ]
            await asyncio.sleep(1.0)
            psutil.Process(short).send_signal(signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*requests), 400)

    outcomes = asyncio.run(only_replica_killed())
    print("lab-short's only replica killed during 8 requests:", outcomes)
    assert set(outcomes) <= {"ok", "503", "error event"}, outcomes
    health = wait_for(
        lambda: (r := httpx.get(f"{ray_server}/health")).status_code == 503 and r.json(), "health to say so", timeout=60
    )
    assert health["variants"]["lab-short"] == "restarting" and health["variants"]["lab-long"] == "ready"
    refused = httpx.post(f"{ray_server}/v1/chat/completions", json={"model": "lab-short", "messages": MESSAGES})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    wait_for(lambda: httpx.get(f"{ray_server}/health").status_code == 200, "lab-short back", timeout=300)
    assert asyncio.run(_one(ray_server, "lab-short")) == "ok"


async def _one(base_url: str, model: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        return await _request(http, 0, model=model)


async def _request(
    http: httpx.AsyncClient,
    i: int,
    model: str | None = None,
    tokens: int = 120,
    ignore_eos: bool = False,
    started: list[int] | None = None,
) -> str:
    """One chat completion, streamed when i is odd: "ok" (a whole answer), "503" (with Retry-After), "error event"
    (then [DONE]) or what else happened. A stream's `i` is added to `started` at its first generated event."""
    try:
        return await _request_once(http, i, model, tokens, ignore_eos, started if started is not None else [])
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"


async def _request_once(
    http: httpx.AsyncClient, i: int, model: str | None, tokens: int, ignore_eos: bool, started: list[int]
) -> str:
    body = {
        "model": model or ["lab-long", "lab-short", "auto"][i % 3],
        "messages": [{"role": "user", "content": f"What is {10 + i % 50}+{i % 7}+{3 + i % 11}?"}],
        "max_tokens": tokens,
        "temperature": 1.0,
        "seed": i,
        "ignore_eos": ignore_eos,  # (to keep a short model's requests running long enough to be cut)
    }
    if i % 4 == 1:
        body["reasoning_effort"] = "low"
    elif i % 4 == 2:
        body["thinking_token_budget"] = 24
    if i % 2:
        body["stream"] = True
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return str(response.status_code)
            events = []
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 2:  # (the first is the role chunk, sent before the engine starts)
                        started.append(i)
        if events[-1] != "[DONE]":
            return "no [DONE]"
        if any("error" in json.loads(event) for event in events[:-1]):
            return "error event"
        finished = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
        return "ok" if finished[-1] in ("stop", "length") else "unfinished"
    response = await http.post("/v1/chat/completions", json=body)
    if response.status_code == 503:
        return "503" if response.headers.get("retry-after") else "503 without Retry-After"
    if response.status_code != 200:
        return str(response.status_code)
    return "ok" if response.json()["choices"][0]["message"]["content"] is not None else "empty"
