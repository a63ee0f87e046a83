"""SIGTERM drains: the listener stays open and new requests get 503, in-flight requests finish within the grace,
a stream that outlives it ends with an error event and [DONE] (not a cut socket), and no engine process
outlives the server — also when SIGTERM arrives while the engine is still loading."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from conftest import gauge, wait_for

from l2s.local_server import start_server, stop_server, wait_healthy

pytestmark = pytest.mark.slow

GRACE = 1.0


def lab_short_server(lab_models: Path, tmp_path: Path):
    config = tmp_path / "server.yaml"
    variants = [{"name": "lab-short", "path": str(lab_models / "lab-short")}]
    config.write_text(yaml.safe_dump({"variants": variants, "shutdown_grace_seconds": GRACE}))
    empty = tmp_path / "no-models"
    empty.mkdir()
    env = {**os.environ, "L2S_HOME": str(tmp_path)}
    return start_server(empty, "--config", str(config), log_path=tmp_path / "server.log", env=env)


def descendants(process: psutil.Process, seen: set[int]) -> None:
    try:
        seen.update(child.pid for child in process.children(recursive=True))
    except psutil.NoSuchProcess:
        pass


def alive(pids: set[int]) -> list[int]:
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            pass
    return living


def sequences_held(base_url: str) -> float:
    return gauge(base_url, "l2s_running_requests") + gauge(base_url, "l2s_waiting_requests")


def request(tokens: int, stream: bool = False, n: int = 1) -> dict:
    # ignore_eos: the model writes exactly `tokens` tokens, so the request's length is known in advance
    return {
        "model": "lab-short",
        "messages": [{"role": "user", "content": "What is 1+2?"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
        "n": n,
    }


def test_sigterm_drains_then_ends_what_outlives_the_grace(lab_models, tmp_path):
    process, base_url = lab_short_server(lab_models, tmp_path)
    seen: set[int] = set()
    try:
        wait_healthy(base_url, process)
        descendants(psutil.Process(process.pid), seen)
        events: list[str] = []
        streaming = threading.Event()

        def long_stream() -> None:  # 4 × 900 tokens: seconds, far longer than the grace
            body = request(900, stream=True, n=4)
            with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        streaming.set()

        response_events: list[dict] = []
        responding = threading.Event()

        def long_response_stream() -> None:  # the same through the Responses API: its events are numbered
            body = {"model": "lab-short", "input": "1+1=", "max_output_tokens": 900, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{base_url}/v1/responses", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        response_events.append(json.loads(line[6:]))
                        responding.set()

        short: dict = {}

        def short_request() -> None:  # 40 tokens: finishes within the grace
            response = httpx.post(f"{base_url}/v1/chat/completions", json=request(40), timeout=60)
            short.update(status=response.status_code, body=response.json())

        threads = [threading.Thread(target=f) for f in (long_stream, long_response_stream, short_request)]
        threads[0].start()
        threads[1].start()
        assert streaming.wait(30) and responding.wait(30)
        threads[2].start()
        # SIGTERM only once the server holds the short request (4 + 1 + 1 sequences), else it is refused, rightly
        wait_for(lambda: short or sequences_held(base_url) >= 6, "the short request to be admitted")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        refused = httpx.post(f"{base_url}/v1/chat/completions", json=request(5), timeout=10)  # still listening
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert refused.headers.get("retry-after")
        assert httpx.get(f"{base_url}/health").json()["status"] == "shutting_down"
        for thread in threads:
            thread.join(60)
        assert short["status"] == 200 and short["body"]["usage"]["completion_tokens"] == 40
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "shutting_down", events[-3:]
        generated = "".join(
            choice["delta"].get("content", "") for e in events[:-2] for choice in json.loads(e).get("choices", [])
        )
        assert generated  # it had streamed part of its answer before it was ended
        last = response_events[-1]
        assert last["type"] == "error" and last["code"] == "shutting_down", response_events[-2:]
        numbers = [event["sequence_number"] for event in response_events]
        assert numbers == list(range(len(numbers))), numbers[-5:]  # the closing event numbered after the rest
        process.wait(60)
        # an engine process reaped by the server's shutdown can take a moment to be gone: none may stay
        wait_for(lambda: not alive(seen), "no engine process to outlive the server", timeout=10)
    finally:
        stop_server(process)


def test_sigterm_while_the_engine_loads_leaves_no_process(lab_models, tmp_path):
    process, base_url = lab_short_server(lab_models, tmp_path)
    seen: set[int] = set()
    try:
        server = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until vLLM has started its engine process, not yet ready
            descendants(server, seen)
            names = []
            for pid in seen:
                try:
                    names.append(psutil.Process(pid).name())
                except psutil.NoSuchProcess:
                    pass
            if any("EngineCore" in name for name in names):
                break
            time.sleep(0.1)
        assert httpx.get(f"{base_url}/health").status_code == 503  # still loading
        process.send_signal(signal.SIGTERM)
        while process.poll() is None and time.monotonic() < deadline + 120:
            descendants(server, seen)
            time.sleep(0.1)
        assert process.poll() is not None, "the server did not exit"
        wait_for(lambda: not alive(seen), "no engine process to outlive the server", timeout=10)
    finally:
        stop_server(process)
