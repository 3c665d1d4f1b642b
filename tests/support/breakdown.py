"""llama.cpp's own memory numbers: start llama-server -lv 4 and read its fit projection.

At start llama-server's --fit step loads the model without allocating (no_alloc), builds a
context, and prints ``common_memory_breakdown_print`` rows at trace level (-lv 4):

    | memory breakdown [MiB] | total free self model context compute unaccounted |
    |   - Host               |        285 =   222 +      42 +      20          |
    |   - CPU_REPACK         |         12 =    12 +       0 +       0          |

That is exactly what the server will allocate, before any weight is read. The process is stopped
as soon as the projection line that follows the table appears.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

ROW = re.compile(r"common_memory_breakdown_print: \|\s+-\s+(?P<name>[^|]+?)\s+\|[^|]*?"
                 r"(?P<self>\d+)\s+=\s+(?P<model>\d+)\s+\+\s+(?P<context>\d+)\s+\+\s+(?P<compute>\d+)")


def parse_breakdown(log: str) -> dict:
    """Sum of model / context / compute (MiB) over the host rows of the first breakdown table."""
    totals = {"model": 0, "context": 0, "compute": 0, "rows": []}
    for line in log.splitlines():
        match = ROW.search(line)
        if match:
            totals["rows"].append(match.group("name"))
            for key in ("model", "context", "compute"):
                totals[key] += int(match.group(key))
        elif totals["rows"]:
            break  # the first table ended
    if not totals["rows"]:
        raise ValueError("no memory breakdown rows in llama-server's output:\n" + log[-3000:])
    return totals


def measure(image: str, model_path: str, argv: list[str], timeout: float = 120.0) -> dict:
    """Run llama-server from image on model_path with argv; return its projected breakdown."""
    model_dir, model_file = os.path.split(os.path.abspath(model_path))
    name = f"llamafleet-breakdown-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    cmd = ["docker", "run", "--rm", "--name", name, "--network", "none", "-v", f"{model_dir}:/models:ro",
           image, "-m", f"/models/{model_file}", "-lv", "4", "--port", "18998", "-t", "1", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if "projected to use" in line or "failed" in line.lower() and "error" in line.lower():
                break
            if time.monotonic() > deadline:
                break
    finally:
        subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.kill()
        proc.wait()
    return parse_breakdown("".join(lines))
