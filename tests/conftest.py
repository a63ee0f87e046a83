"""Shared fixtures. The lab models are built by `make setup` (`l2s lab build`); the server fixture starts the
real `l2s serve` on loopback, once per test session, and stops it with SIGTERM at the end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
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


def gauge(base_url: str, name: str) -> float:
    """A Prometheus metric from the server's /metrics, summed over its labels."""
    text = httpx.get(f"{base_url}/metrics").text
    return sum(float(value) for value in re.findall(rf"^{name}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M))


def wait_for(predicate, what: str, timeout: float = 30):
    """Poll `predicate` until it returns something true, and return that; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write_sum_dataset(directory: Path, count: int) -> tuple[Path, Path]:
    """Lab-style sums as a user's own data: a `jsonl:` file and an `hf:` dataset directory (save_to_disk, with a
    train split), answers checked by math-verify like any dataset's. The lab model can solve them."""
    from datasets import Dataset, DatasetDict

    from l2s.lab.task import generate_problems

    rows = [{"question": p.question, "answer": str(p.answer)} for p in generate_problems("train", count, seed=77)]
    directory.mkdir(parents=True, exist_ok=True)
    jsonl = directory / "sums.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(directory / "sums-hf")
    return jsonl, directory / "sums-hf"
