"""Shared fixtures. The lab models are built by `make setup` (`l2s lab build`); the server fixture starts the
real `l2s serve` on loopback, once per test session, and stops it with SIGTERM at the end."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from l2s.local_server import start_server as start_server_process
from l2s.local_server import stop_server, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("L2S_MODELS", ROOT / "models"))


@pytest.fixture(scope="session")
def lab_models() -> Path:
    for name in ("lab-long", "lab-short"):
        if not (MODELS / name / "card.json").is_file():
            pytest.fail(f"{MODELS / name} is missing: run `make setup` (it builds the lab models)")
    return MODELS


def start_server(models: Path, *extra: str, log_name: str = "server") -> tuple[subprocess.Popen, str, Path]:
    log_path = ROOT / ".pytest_cache" / f"{log_name}-{time.time_ns()}.log"
    process, base_url = start_server_process(models, *extra, log_path=log_path, cwd=ROOT)
    return process, base_url, log_path


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
