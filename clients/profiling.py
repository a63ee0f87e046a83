"""Where a server's time goes: py-spy samples of a server and its engine processes while a workload runs.

`record(pid, path)` starts sampling a process and its children (vLLM runs an API process, an engine-core process
and a worker process); `stop(recorder)` ends it and writes py-spy's raw collapsed stacks; `summarize(path)` turns
them into CPU seconds per process, per package (by the innermost frame) and the busiest functions.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

RATE_HZ = 100
_FRAME_FILE = re.compile(r"\(([^()]*?):\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed (it is in the dev extras: pip install -e '.[dev]')")
    return found


def record(pid: int, path: Path) -> subprocess.Popen:
    """Sample `pid` and its subprocesses (on-CPU stacks only, without pausing them) until `stop`."""
    command = [py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking"]
    command += ["--rate", str(RATE_HZ), "--format", "raw", "--output", str(path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(recorder: subprocess.Popen) -> None:
    recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    recorder.wait(timeout=60)


def _process_name(frame: str) -> str:
    """`process 123:"VLLM::EngineCore"` -> `VLLM::EngineCore`; the API process by its command's module."""
    command = frame.split(":", 1)[1].strip('"')
    if command.startswith("VLLM::"):
        return command
    return "api (" + next((part for part in command.split() if "." in part and "/" not in part), command[:30]) + ")"


def _package(frame: str) -> str:
    match = _FRAME_FILE.search(frame)
    if not match:
        return "native / unknown"
    top = match.group(1).split("/")[0].removesuffix(".py")
    if len(top) > 40 and top.isalnum():
        return "torch.compile kernels"  # inductor's generated modules are named by their hash
    return top


def summarize(path: Path, top: int = 8, within: dict[str, tuple[str, ...]] | None = None) -> dict:
    """CPU seconds per process, and for each its packages and functions by self time (the innermost frame).

    `within` names code to measure inclusively, by substrings of its frames (`{"ours": ("(server/",)}`): the CPU
    seconds of samples with such a frame anywhere on the stack, i.e. that code and everything it called."""
    within = within or {}
    processes: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        names = [frame for frame in frames if frame.startswith("process ")]
        code = [frame for frame in frames if not frame.startswith("process ") and not frame.startswith("thread ")]
        name = _process_name(names[-1]) if names else "unknown"
        leaf = code[-1] if code else "native / unknown"
        entry = processes.setdefault(
            name,
            {
                "samples": 0,
                "packages": collections.Counter(),
                "functions": collections.Counter(),
                "within": collections.Counter(),
            },
        )
        entry["samples"] += samples
        entry["packages"][_package(leaf)] += samples
        entry["functions"][leaf] += samples
        for label, markers in within.items():
            if any(marker in frame for frame in code for marker in markers):
                entry["within"][label] += samples
    return {
        name: {
            "cpu_s": entry["samples"] / RATE_HZ,
            "packages": {k: v / RATE_HZ for k, v in entry["packages"].most_common(top)},
            "functions": {k: v / RATE_HZ for k, v in entry["functions"].most_common(top)},
            "within": {label: entry["within"][label] / RATE_HZ for label in within},
        }
        for name, entry in sorted(processes.items(), key=lambda item: -item[1]["samples"])
    }
