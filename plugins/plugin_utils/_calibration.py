# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What playbooks/calibrate.yml measured on a host, read back by the plan.

One JSON file per host, ``<llamafleet_report_dir>/calibration/<inventory_hostname>.json``:

    {"host": "gpu-box-1", "measured_at": "...", "llama_cpp": "0c1e570", "driver": "580.95.05" | null,
     "backend": "cuda" | "cpu",
     "gpus": {"P106-100": {"overhead_mib": 151.0, "uncertainty_mib": 6.0, "readings": [...]}},
     "process_overhead_mib": 41.0,                       # host RAM of a llama-server beyond its buffers
     "speed": {"<model>": {"<device name>": {"prefill_tps": .., "decode_tps": ..}}}}

A GPU overhead is nvidia-smi's per-process memory of a server minus llama.cpp's own breakdown of
it; a speed is the server's own timings for a fixed request. The plan uses a file only when it
matches the host: the same llama.cpp as the inventory builds, the same driver as the host reports
(where a GPU host was calibrated), and only for GPUs the host declares. Anything else is a finding,
never a silent fallback.
"""
from __future__ import annotations

import json
import os

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._findings import finding

FILE_KEYS = {"host", "measured_at", "llama_cpp", "driver", "backend", "gpus", "process_overhead_mib",
             "process_readings_mib", "speed"}


def calibration_file(calibration_dir: str, host: str) -> str:
    """<llamafleet_report_dir>/calibration/<host>.json: calibrate.yml writes it, plan.yml reads it."""
    return os.path.join(calibration_dir, f"{host}.json")


def _finding(level: str, code: str, host: str, message: str) -> dict:
    return finding(level, code, host, None, message)


def load(calibration_dir: str | None, host: str, spec: dict, llama_cpp_ref: str | None) -> tuple[dict | None, list[dict]]:
    """(the usable calibration of this host or None, findings about it)."""
    if not calibration_dir:
        return None, []
    path = calibration_file(calibration_dir, host)
    if not os.path.exists(path):
        return None, []
    try:
        with open(path, encoding="utf-8") as handle:
            cal = json.load(handle)
    except (OSError, ValueError) as exc:
        return None, [_finding("error", "calibration-invalid", host, f"{path}: cannot be read as JSON ({exc}); "
                                                                     f"delete it or run playbooks/calibrate.yml again")]
    return check(cal, host, spec, llama_cpp_ref, path)


def _remeasure(host: str, spec: dict) -> str:
    """The fix for a calibration that does not apply: measure again, or, on a simulated host (which
    calibrate.yml refuses), take the file of the real host it rehearses."""
    if spec.get("backend") == "sim":
        return (f"Copy a calibration measured on the real host (backend cuda) to {host}'s name with \"host\" "
                f"set to it (docs/sim.md), or delete the file")
    return f"Run playbooks/calibrate.yml --limit {host}"


def check(cal: dict, host: str, spec: dict, llama_cpp_ref: str | None, path: str) -> tuple[dict | None, list[dict]]:
    """Validate one host's calibration against the host as the inventory declares it."""
    if not isinstance(cal, dict) or set(cal) - FILE_KEYS or cal.get("host") != host:
        return None, [_finding("error", "calibration-invalid", host,
                               f"{path}: not a calibration file of host {host} (keys {sorted(cal) if isinstance(cal, dict) else cal!r}). "
                               f"{_remeasure(host, spec)}")]
    if llama_cpp_ref and cal.get("llama_cpp") != llama_cpp_ref:
        return None, [_finding("error", "calibration-stale", host,
                               f"{path} was measured with llama.cpp {cal.get('llama_cpp')}, the inventory builds "
                               f"{llama_cpp_ref}; its figures no longer apply. {_remeasure(host, spec)}")]
    if cal.get("backend") != spec["planned_as"]:
        return None, [_finding("error", "calibration-stale", host,
                               f"{path} was measured on the {cal.get('backend')} backend, the host now uses "
                               f"{spec['planned_as']}. {_remeasure(host, spec)}")]
    findings = []
    declared = {g["name"] for g in spec["gpus"]}
    gpus = {}
    for name, entry in (cal.get("gpus") or {}).items():
        if name not in declared:
            findings.append(_finding("error", "calibration-gpu-absent", host,
                                     f"{path} has an overhead for GPU '{name}', which llamafleet_gpus of {host} does "
                                     f"not declare ({', '.join(sorted(declared)) or 'none'}); it is not used. Fix "
                                     f"llamafleet_gpus, or: {_remeasure(host, spec)}"))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("overhead_mib"), (int, float)):
            findings.append(_finding("error", "calibration-invalid", host,
                                     f"{path}: gpus['{name}'].overhead_mib must be a number, got {entry!r}"))
            continue
        gpus[name] = entry
    return dict(cal, gpus=gpus), findings


def driver_findings(cal: dict | None, host: str, driver: str | None) -> list[dict]:
    """A GPU calibration taken under another driver is stale (nvidia-smi's driver_version)."""
    if cal and cal.get("backend") == "cuda" and driver and cal.get("driver") != driver:
        return [_finding("error", "calibration-stale", host,
                         f"the calibration of {host} was measured with driver {cal.get('driver')}, the host now "
                         f"runs {driver}. Run playbooks/calibrate.yml --limit {host}")]
    return []


# -- building a calibration from what calibrate.yml read on a host ---------------------------------
def parse_compute_apps(csv_text: str) -> dict[int, float]:
    """pid -> MiB from `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`."""
    used: dict[int, float] = {}
    for line in csv_text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"unexpected nvidia-smi line {line!r} (expected pid, used_memory)")
        used[int(fields[0])] = used.get(int(fields[0]), 0.0) + float(fields[1])
    return used


def build(host: str, backend: str, llama_cpp: str, driver: str | None, plan_servers: list[dict],
          processes: dict[str, dict], compute_apps_csv: str, timings: dict[str, dict], measured_at: str) -> dict:
    """The calibration of one host from its running servers.

    plan_servers: this host's servers from plan.json (device, memory_mib, overhead_detail, model).
    processes: server name -> {"pid": host pid of its llama-server, "rss_kib": RssAnon in KiB}.
    compute_apps_csv: nvidia-smi's per-process memory (cuda hosts; "" on the CPU backend).
    timings: server name -> llama-server's "timings" of a fixed request (chat servers).

    GPU: a server's reading is nvidia-smi's memory of its process minus llama.cpp's buffers as the
    plan computes them (model + context + compute, within 1% / 10% of llama.cpp's own breakdown on
    the H200) minus the cuBLAS and pool parts its settings add (_overhead), so the file holds the
    card's base overhead. Host (CPU backend): a server's anonymous resident memory when idle is its
    own part (heap, HTTP threads) plus whatever KV, compute and output pages it has touched so far,
    so each reading bounds the process's own part from above, and the host's figure is the smallest
    reading: the tightest bound, still on the safe side. The largest would count buffers the plan
    already has: on the lab, an embedding server that once took a full batch holds 1,102 MiB of
    RssAnon, its compute 516 + output 513 + KV 9 MiB and 64 MiB of its own, against 60-85 MiB for
    any server whose buffers are still mostly untouched.
    """
    smi = parse_compute_apps(compute_apps_csv) if compute_apps_csv.strip() else {}
    gpus: dict[str, list[float]] = {}
    process: list[float] = []
    speed: dict[str, dict] = {}
    problems = []
    for server in plan_servers:
        name, mem = server["name"], server["memory_mib"]
        proc = processes.get(name)
        if proc is None:
            problems.append(f"{name}: no running llama-server (deploy with site.yml first)")
            continue
        if backend == "cuda":
            if proc["pid"] not in smi:
                problems.append(f"{name}: nvidia-smi lists no process {proc['pid']} (pids {sorted(smi)})")
                continue
            parts = (server.get("overhead_detail") or {}).get("parts", {})
            base = smi[proc["pid"]] - mem["model"] - mem["context"] - mem["compute"] - parts.get("cublas", 0.0) \
                - parts.get("pool", 0.0)
            gpus.setdefault(server["gpu_name"], []).append(round(base, 1))
        else:
            process.append(proc["rss_kib"] / 1024)
        t = timings.get(name)
        if t:
            device = server.get("gpu_name") or "cpu"
            speed.setdefault(server["model"], {})[device] = {
                "prefill_tps": round(float(t["prompt_per_second"]), 1),
                "decode_tps": round(float(t["predicted_per_second"]), 1)}
    if problems:
        raise ValueError(f"{host}: cannot calibrate: " + "; ".join(problems))
    out = {"host": host, "measured_at": measured_at, "llama_cpp": llama_cpp, "driver": driver, "backend": backend,
           "gpus": {}, "speed": speed}
    for name, readings in gpus.items():
        out["gpus"][name] = {"overhead_mib": round(max(readings), 1),
                             "uncertainty_mib": round(max(MEASURED_SPREAD_FLOOR_MIB, (max(readings) - min(readings)) / 2), 1),
                             "readings": readings}
    if process:
        out["process_overhead_mib"] = round(min(process), 1)
        out["process_readings_mib"] = [round(p, 1) for p in process]
    return out


MEASURED_SPREAD_FLOOR_MIB = 10.0
