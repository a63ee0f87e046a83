"""The client examples and a short locust run against the real lab server."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "script, expected",
    [
        ("clients/chat.py", "answer:"),
        ("clients/stream.py", "[answer]"),
        ("clients/budgets.py", "auto thinking_token_budget=8"),
        ("clients/compare.py", "lab-short"),
    ],
)
def test_examples_run(server_url, script, expected):
    result = subprocess.run(
        [sys.executable, script, "--base-url", f"{server_url}/v1"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout


def test_locust_short_run(server_url, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "l2s.cli",
            "loadtest",
            "--base-url",
            server_url,
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--duration",
            "8s",
            "--max-requests",
            "20",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    with (tmp_path / "locust_stats.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    posts = [r for r in rows if r["Type"] == "POST"]
    assert sum(int(r["Request Count"]) for r in posts) > 0
    assert sum(int(r["Failure Count"]) for r in posts) == 0
    names = {r["Name"] for r in rows if r["Type"] == "metric"}
    assert any(n.endswith("ttft_ms") for n in names) and any(n.endswith("reasoning_tokens") for n in names)
    assert any(n.endswith("first_answer_ms") for n in names) and any(n.endswith("inter_token_ms") for n in names)
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "latency_throughput.png").is_file()
