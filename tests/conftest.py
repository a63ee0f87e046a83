"""Shared fixtures. The lab models are built by `make setup` (`l2s lab build`); the server fixture starts the
real `l2s serve` on loopback, once per test session, and stops it with SIGTERM at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("L2S_MODELS", ROOT / "models"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def lab_models() -> Path:
    for name in ("lab-long", "lab-short"):
        if not (MODELS / name / "card.json").is_file():
            pytest.fail(f"{MODELS / name} is missing: run `make setup` (it builds the lab models)")
    return MODELS


def wait_healthy(base_url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("server did not become healthy")


def start_server(models: Path, *extra: str, log_name: str = "server") -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log_path = ROOT / ".pytest_cache" / f"{log_name}-{port}.log"
    log_path.parent.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "l2s.cli",
            "serve",
            "--models-dir",
            str(models),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return process, f"http://127.0.0.1:{port}", log_path


def stop_server(process: subprocess.Popen, timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture(scope="session")
def server_url(lab_models: Path):
    process, base_url, log_path = start_server(lab_models)
    try:
        wait_healthy(base_url, process)
    except Exception:
        stop_server(process)
        raise RuntimeError("server failed to start:\n" + log_path.read_text()[-3000:]) from None
    yield base_url
    stop_server(process)


@pytest.fixture(scope="session")
def client(server_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0, timeout=120)
