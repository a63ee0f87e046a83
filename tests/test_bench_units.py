"""The serving benchmark's profile summary and report table (the benchmark itself runs in `make bench`)."""

from __future__ import annotations

from clients.bench import summary_table
from clients.profiling import summarize

API = 'process 10:"/venv/bin/python -m l2s.cli serve --port 1"'
CORE = 'process 11:"VLLM::EngineCore"'
RAW = "\n".join(
    [
        f"{API};run (uvicorn/server.py:86);send (uvicorn/protocols/http/httptools_impl.py:544) 30",
        f"{API};run (uvicorn/server.py:86);stream (server/service.py:193) 10",
        f"{API};{CORE};run_busy_loop (vllm/v1/engine/core.py:900);sched_yield (vllm/distributed/utils.py:46) 50",
        f"{API};{CORE};run_busy_loop (vllm/v1/engine/core.py:900) 5",
        "garbage line without a count",
    ]
)


def test_summarize_splits_processes_and_packages(tmp_path):
    path = tmp_path / "profile.txt"
    path.write_text(RAW + "\n")
    summary = summarize(path, within={"ours": ("(server/",), "engine loop": ("core.py",)})
    assert list(summary) == ["VLLM::EngineCore", "api (l2s.cli)"]  # busiest first
    assert summary["VLLM::EngineCore"]["cpu_s"] == 0.55
    assert summary["api (l2s.cli)"]["packages"] == {"uvicorn": 0.3, "server": 0.1}
    assert summary["VLLM::EngineCore"]["functions"]["sched_yield (vllm/distributed/utils.py:46)"] == 0.5
    assert summary["api (l2s.cli)"]["within"] == {"ours": 0.1, "engine loop": 0.0}
    assert summary["VLLM::EngineCore"]["within"] == {"ours": 0.0, "engine loop": 0.55}  # inclusive: callees too


def _run(tok_s: float, length: float) -> dict:
    return {
        "output_tokens_per_s": tok_s,
        "completion_tokens_mean": length,
        "ttft_p50_s": 0.05,
        "ttft_p99_s": 0.08,
        "tpot_mean_s": 0.005,
        "requests": 8,
        "concurrency": 32,
    }


def test_summary_table_reports_every_comparison(tmp_path):
    path = tmp_path / "profile.txt"
    path.write_text(RAW + "\n")
    report = {
        "date": "2026-11-29 20:00 UTC",
        "machine": {"cpus": 2},
        "model": "models/lab-long",
        "baseline": "vllm",
        "requests_per_run": {"32": 256},
        "side_by_side": {
            "32": {
                "ours": _run(1000, 230),
                "baseline": _run(800, 230),
                "throughput_ratio": 1.25,
                "throughput_ratio_range": [1.1, 1.3],
                "ttft_p50_ratio": 1.0,
                "ttft_p99_ratio": 1.0,
                "tpot_ratio": 1.0,
            }
        },
        "budgeted": {
            "ours": {
                "concurrency": 32,
                "budget": 32,
                "budgeted": _run(900, 45),
                "unbudgeted": _run(1000, 230),
                "unbudgeted_same_length": _run(920, 45),
                "throughput_ratio": 0.9,
                "same_length_throughput_ratio": 900 / 920,
            }
        },
        "profile": {"ours": {"run": _run(1000, 230), "processes": summarize(path, within={"ours": ("(server/",)})}},
    }
    table = summary_table(report)
    assert "256 streaming requests per run at 32 streams" in table
    assert "| output tok/s ours / vLLM (ratio; range over rounds) |" in table
    assert "| 32 | 1000 / 800 (1.25; rounds 1.10–1.30)" in table
    assert "vs unbudgeted on ours at 32 streams" in table
    assert "(ratio 0.90; completions of 45 vs 230 tokens)" in table and "(ratio 0.98)" in table
    assert "| VLLM::EngineCore | 0.55 | vllm 0.55 | – |" in table
    assert "| api (l2s.cli) | 0.40 | uvicorn 0.30, server 0.10 | ours 0.10 |" in table
