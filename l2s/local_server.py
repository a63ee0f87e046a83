"""Start, wait for and stop an `l2s serve` process on loopback: shared by the tests, `l2s loadtest --spawn` and
the serving benchmark, so all three start the server the same way."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    models_dir: str | Path, *extra: str, log_path: Path, env: dict | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """`l2s serve --models-dir MODELS_DIR EXTRA...` on a free loopback port, logging to `log_path`."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "l2s.cli", "serve", "--models-dir", str(models_dir), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--log-level", "warning", *extra],
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(base_url: str, process: subprocess.Popen, timeout: float = 400) -> None:
    """Until `GET /health` answers 200; fails at once if the process exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {base_url} exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the server at {base_url} did not become healthy in {timeout:.0f} s")


def stop_server(process: subprocess.Popen, timeout: float = 120) -> int:
    """SIGTERM (a graceful drain), then SIGKILL if it takes longer than `timeout`; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
