"""`l2s loadtest`: locust, headless, against a server (or one it spawns on the lab models), bounded in users,
time and requests; writes locust's CSVs, `summary.md` and a latency/throughput plot."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

from l2s.local_server import start_server, stop_server, wait_healthy

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--base-url", help="server root, e.g. http://127.0.0.1:8000 (loopback only)")
    target.add_argument("--spawn", action="store_true", help="start `l2s serve` on the lab models, stop it after")
    parser.add_argument("--models-dir", default="models", help="with --spawn (default: %(default)s)")
    parser.add_argument("--users", type=int, default=8, help="concurrent users (default: %(default)s)")
    parser.add_argument("--spawn-rate", type=float, default=4, help="users started per second (default: %(default)s)")
    parser.add_argument("--duration", default="60s", help="run time, locust syntax (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=0, help="requests per user, then it stops (0: no cap)")
    parser.add_argument(
        "--variants", default="lab-long:1,lab-short:1", help="variant:weight,... (default: %(default)s)"
    )
    parser.add_argument("--budgets", default="none,16,64", help="budgets drawn per request (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output directory")


def _check_loopback(url: str) -> None:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    if host not in ("localhost", "::1") and not host.startswith("127."):
        raise SystemExit(f"load tests target loopback only, not {host}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = None
    url = args.base_url
    if args.spawn:
        server, url = start_server(args.models_dir, log_path=out / "server.log")
        try:
            wait_healthy(url, server)
        except Exception:
            stop_server(server)
            raise
    _check_loopback(url)
    environment = {
        **os.environ,
        "L2S_VARIANTS": args.variants,
        "L2S_BUDGETS": args.budgets,
        "L2S_MAX_REQUESTS": str(args.max_requests),
    }
    try:
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            url,
            "--users",
            str(args.users),
            "--spawn-rate",
            str(args.spawn_rate),
            "--run-time",
            args.duration,
            "--csv",
            str(out / "locust"),
            "--csv-full-history",
            "--only-summary",
            "--stop-timeout",
            "30",
        ]
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        (out / "locust.log").write_text(result.stdout + result.stderr)
    finally:
        if server is not None:
            stop_server(server)
    stats = _read_stats(out / "locust_stats.csv")
    write_summary(out, stats, args, url)
    plot_history(out / "locust_stats_history.csv", out / "latency_throughput.png")
    print((out / "summary.md").read_text())
    failures = sum(
        int(row["Failure Count"]) for row in stats if row["Type"] != "metric" and row["Name"] != "Aggregated"
    )
    return 1 if failures else 0


def _read_stats(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"locust wrote no statistics ({path}); see locust.log beside it")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def write_summary(out: Path, stats: list[dict], args: argparse.Namespace, url: str) -> None:
    requests = [row for row in stats if row["Type"] == "POST"]
    metrics = [row for row in stats if row["Type"] == "metric"]
    lines = [
        "# Load test",
        "",
        f"{args.users} users (spawn rate {args.spawn_rate}/s) for {args.duration} against "
        f"{url}; variants {args.variants}; budgets {args.budgets}.",
        "",
        "| request | count | failures | median ms | p95 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in requests:
        lines.append(
            f"| {row['Name']} | {row['Request Count']} | {row['Failure Count']} | {row['Median Response Time']} "
            f"| {row['95%']} | {row['99%']} | {float(row['Requests/s']):.2f} |"
        )
    total = sum(int(r["Request Count"]) for r in requests)
    failed = sum(int(r["Failure Count"]) for r in requests)
    lines += [
        "",
        f"Requests: {total}, failures: {failed}.",
        "",
        "| custom metric | count | median | mean | p95 |",
        "|---|---|---|---|---|",
    ]
    for row in metrics:
        lines.append(
            f"| {row['Name']} | {row['Request Count']} | {row['Median Response Time']} | "
            f"{float(row['Average Response Time']):.1f} | {row['95%']} |"
        )
    lines += ["", "![latency and throughput](latency_throughput.png)", ""]
    (out / "summary.md").write_text("\n".join(lines))


def _number(text: str) -> float:
    """locust writes N/A before the first response of a run."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def plot_history(history: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history.is_file():
        return
    with history.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    if not rows:
        return
    start = int(rows[0]["Timestamp"])
    seconds = [int(r["Timestamp"]) - start for r in rows]
    figure, left = plt.subplots(figsize=(7, 4))
    left.plot(seconds, [_number(r["Requests/s"]) for r in rows], color="tab:blue", label="requests/s")
    left.set_xlabel("seconds")
    left.set_ylabel("requests/s", color="tab:blue")
    right = left.twinx()
    right.plot(seconds, [_number(r["50%"]) for r in rows], color="tab:orange", label="median ms")
    right.plot(seconds, [_number(r["95%"]) for r in rows], color="tab:red", label="p95 ms")
    right.set_ylabel("latency (ms)")
    right.legend(loc="upper right")
    left.set_title("Load test: throughput and latency")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
