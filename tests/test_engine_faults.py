"""A variant's vLLM engine dies (kill -9 of its engine process): /health turns 503 at once and names it, its
requests get 503 with Retry-After, the engine is restarted in place (counted in /metrics), and once the
restarts allowed are spent the server exits non-zero and leaves no engine process behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from conftest import wait_for

from l2s.local_server import start_server, stop_server, wait_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
REQUEST = {"model": "lab-short", "messages": [{"role": "user", "content": "What is 1+2?"}], "max_tokens": 16}


def engine_processes(server: psutil.Process) -> list[psutil.Process]:
    """The server's vLLM engine-core processes (vLLM names them `VLLM::EngineCore`)."""
    found = []
    for child in server.children(recursive=True):
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_dead_engine_is_noticed_restarted_then_the_server_exits(lab_models, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text(
        yaml.safe_dump(
            {"variants": [{"name": "lab-short", "path": str(lab_models / "lab-short")}], "max_engine_restarts": 1}
        )
    )
    empty = tmp_path / "no-models"
    empty.mkdir()
    env = {**os.environ, "L2S_HOME": str(tmp_path)}  # no registered variants from elsewhere
    process, base_url = start_server(empty, "--config", str(config), log_path=tmp_path / "server.log", env=env)
    try:
        wait_healthy(base_url, process)
        assert httpx.post(f"{base_url}/v1/chat/completions", json=REQUEST, timeout=60).status_code == 200
        server = psutil.Process(process.pid)

        # First death: noticed at once, refused with 503 + Retry-After, restarted in place.
        first = engine_processes(server)
        assert first, "no engine process found"
        for engine in first:
            engine.send_signal(signal.SIGKILL)
        health = wait_for(
            lambda: (r := httpx.get(f"{base_url}/health")).status_code == 503 and r.json(), "/health 503", timeout=10
        )
        assert health["status"] == "engine_dead" and health["variants"]["lab-short"] in ("dead", "restarting")
        refused = httpx.post(f"{base_url}/v1/chat/completions", json=REQUEST, timeout=60)
        assert refused.status_code == 503 and refused.headers.get("retry-after")
        assert refused.json()["error"]["code"] == "engine_unavailable"
        wait_healthy(base_url, process, timeout=300)
        assert httpx.post(f"{base_url}/v1/chat/completions", json=REQUEST, timeout=60).status_code == 200
        metrics = httpx.get(f"{base_url}/metrics").text
        assert 'l2s_engine_deaths_total{variant="lab-short"} 1.0' in metrics
        assert 'l2s_engine_restarts_total{variant="lab-short"} 1.0' in metrics

        # Second death: no restart left, so the server exits non-zero, and no engine process outlives it.
        second = engine_processes(server)
        for engine in second:
            engine.send_signal(signal.SIGKILL)
        assert process.wait(timeout=120) == 1  # exit status 1: for a supervisor to restart the server
        survivors = [p for p in server.children(recursive=True) if p.is_running()] if server.is_running() else []
        assert not survivors
        for engine in first + second:
            assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE
        assert "no restart left" in (tmp_path / "server.log").read_text()
    finally:
        stop_server(process)
