# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan: memory and speed of every server, GPU and host, and the findings, before deploying.

Inputs are normalized hosts (llamafleet_inventory.normalize_host) and a description of every
model (llamafleet_gguf / llamafleet_shapes). The output is a JSON-friendly dict (plan.json) that
the markdown report and the console table are rendered from. Each finding has a level
(error | warning | info), a stable code (docs/findings.md) and a message naming the server, the
numbers and the cheapest fixes.
"""
from __future__ import annotations

import math
import os

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import (
    GGUFError,
    ModelInfo,
    read_model_info,
    read_remote_model_info,
)
from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import cc_int
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._findings import finding
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._fleet import fleet_host, simulate
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import pools
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gpus import gpu_stack
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import ServerMemory, server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._rolling import record_standins
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import QUANTIZED_KV_TYPES, effective
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import ShapeError, model_info_from_shape
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import (
    Device,
    Speed,
    conversation_cache,
    random_routing,
    server_speed,
    sim_profile,
    with_prompt,
    workload,
)

CAPACITY_WARN = 0.8      # utilisation above which queueing makes TTFT p95 climb steeply
DEFAULT_PROMPT, DEFAULT_REPLY = 512, 256


class PlanError(ValueError):
    """A model that cannot be described; names the model and the source that failed."""


# -- models ------------------------------------------------------------------------------------------
def describe_model(name: str, spec: dict, cache_dir: str, controller_root: str = ".", stand_in: bool = False) -> ModelInfo:
    """The best description available without touching a host.

    Order: a file on the controller (src, or path when the controller is the host) -> the
    declared shape and quantization -> the header behind url (HTTP range requests, cached).
    stand_in: the host is simulated, its path holds a stand-in (llm_models), never the model.
    """
    src = spec.get("src")
    if src:
        src = src if os.path.isabs(src) else os.path.join(controller_root, src)
    try:
        for candidate in (src, None if stand_in else spec.get("path")):
            if candidate and os.path.isfile(candidate):
                return read_model_info(candidate, f"llamafleet_models.{name} ({candidate})", cache_dir)
        if src:
            raise PlanError(f"llamafleet_models.{name}.src: {src} does not exist on the controller")
        if spec.get("shape"):
            return model_info_from_shape(spec["shape"], spec.get("quantization", ""), f"llamafleet_models.{name}")
        if spec.get("url"):
            return read_remote_model_info(spec["url"], cache_dir)
    except (GGUFError, ShapeError) as exc:
        raise PlanError(f"llamafleet_models.{name}: {exc}") from exc
    except OSError as exc:
        raise PlanError(f"llamafleet_models.{name}: cannot read the GGUF header ({exc})") from exc
    raise PlanError(f"llamafleet_models.{name}: nothing to plan from: {spec.get('path')} is not on the "
                    f"controller and there is no src, url or shape + quantization")


# -- findings -----------------------------------------------------------------------------------------
def _fmt(mib: float) -> str:
    return "unlimited" if math.isinf(mib) else f"{mib:,.0f} MiB"


def _device_for(spec: dict, host: dict) -> Device:
    cpu = host["host_cpu"]
    cores = host.get("host_cpu_cores") or 2
    host_bw = float(cpu.get("memory_bandwidth_gbs", 10.0))
    host_gflops = float(cpu.get("gflops", 16.0 * cores))
    if spec is None:  # the CPU backend: both "device" and host are the CPU
        return Device("cpu", host_bw, host_gflops / 1000.0, host_bw)
    int8 = spec["int8_tops"] or spec["fp32_tflops"]
    return Device("cuda", spec["bandwidth_gbs"], int8, host_bw, spec.get("sms"),
                  cc_int(spec["compute_capability"]) >= 70)


def _memory(host: dict, server: dict, model: ModelInfo, args: dict) -> ServerMemory:
    """The memory of one server on its host's backend and device, with the host's CUDA overhead."""
    device = f"cuda:{server['gpu']}" if host["planned_as"] == "cuda" else "cpu"
    gpu = next((g for g in host["gpus"] if g["index"] == server["gpu"]), None)
    return server_memory(model, args, host["planned_as"], device, cuda_overhead_mib=host.get("cuda_overhead_mib"),
                         gpu=gpu, calibration=host.get("calibration"))


def plan_host(host: dict, models: dict[str, ModelInfo], pooled: dict[str, dict] | None = None,
              gateway_mib: float = 0.0, gateway_rpm: float | None = None) -> dict:
    """Plan one normalized host: servers, devices, workloads and findings.

    pooled: model -> {prompt_tokens, reply_tokens} of the gateway pool its chat servers sit in; their
    queueing is planned per pool (all hosts together, see gateway_workloads), not per host, and their
    speed for the pool's request shape.
    gateway_mib: host RAM of the gateway (its LiteLLM instances and the pools' HAProxy) when this
    host is also a gateway host (_gateway.pools' memory_mib); gateway_rpm: the requests a minute its
    pools are declared to take then (host_cpu).
    """
    pooled = pooled or {}
    name = host["host"]
    backend = host["planned_as"]  # a simulated host is planned as its declared cards (_inventory.PLANNED_AS)
    gpus = {g["index"]: g for g in host["gpus"]}
    findings: list[dict] = list(host.get("calibration_findings") or [])
    mems: dict[str, ServerMemory] = {}
    for server in host["servers"]:
        model = models[server["model"]]
        mem = _memory(host, server, model, server["args"])
        mems[server["name"]] = mem
        findings.extend(server_findings(host, server, model, mem, gpus.get(server["gpu"])))
        for note in mem.notes:
            if note.startswith("cuda-overhead-unknown: "):
                findings.append(finding("error", "cuda-overhead-unknown", name, server["name"],
                                        note.removeprefix("cuda-overhead-unknown: ")))
    devices = _gpu_devices(host, models, mems, gpus, findings) if backend == "cuda" else []
    # A simulated host installs no GPU software (no gpu_stack), but cards that no driver or toolkit
    # serves are refused on it as on the real host it rehearses.
    stack = _gpu_stack(host, findings) if backend == "cuda" else None
    host_out, ram_device = _host_ram(host, mems, gateway_mib, findings)
    findings.extend(host_cpu(host, gateway_rpm))
    host_out["gpu_stack"] = stack if host["backend"] == "cuda" else None
    devices.extend([ram_device] if ram_device else [])
    speeds = _speeds(host, models, mems, gpus, pooled)
    workloads = _host_workloads(host, speeds, pooled, findings)
    sim_profiles = _sim_profiles(host, models, mems, gpus) if host["backend"] == "sim" else {}
    servers_out = [_server_row(host, server, mems[server["name"]], speeds[server["name"]], gpus, findings)
                   for server in host["servers"]]
    return {"servers": servers_out, "devices": devices, "hosts": [host_out], "workloads": workloads,
            "findings": findings, "sim_profiles": sim_profiles}


def _gpu_devices(host: dict, models: dict[str, ModelInfo], mems: dict[str, ServerMemory], gpus: dict[int, dict],
                 findings: list[dict]) -> list[dict]:
    """One row per card: what its servers need against its memory; a card that cannot hold them is a
    does-not-fit error (with the CUDA overhead's own findings)."""
    devices = []
    for index, gpu in sorted(gpus.items()):
        on_it = [s for s in host["servers"] if s["gpu"] == index]
        planned = sum(mems[s["name"]].total for s in on_it)
        capacity = float(gpu["memory_mib"])
        fits = planned <= capacity
        devices.append({"host": host["host"], "device": f"cuda:{index}", "name": gpu["name"],
                        "capacity_mib": round(capacity), "planned_mib": round(planned, 1),
                        "free_mib": round(capacity - planned, 1), "fits": fits,
                        "servers": [s["name"] for s in on_it]})
        findings.extend(overhead_findings(host["host"], index, gpu, capacity, planned, [mems[s["name"]] for s in on_it]))
        if not fits and on_it:
            findings.append(_does_not_fit(host, index, gpu, on_it, models, mems, capacity, planned))
    return devices


def _does_not_fit(host: dict, index: int, gpu: dict, on_it: list[dict], models: dict[str, ModelInfo],
                  mems: dict[str, ServerMemory], capacity: float, planned: float) -> dict:
    """The does-not-fit error of one card: what each server needs, and the single changes to its
    biggest server that would fit (suggest), or what else to do."""
    biggest = max(on_it, key=lambda s: mems[s["name"]].total)
    estimated = [s["name"] for s in on_it
                 if mems[s["name"]].overhead_detail and mems[s["name"]].overhead_detail.source == "estimated"]
    # an estimated overhead is uncertain on every process of the card (overhead_findings)
    uncertainty = sum(mems[server].overhead_detail.uncertainty_mib for server in estimated)
    alternatives = suggest(host, biggest, models, mems, capacity, planned, _device_for(gpu, host), uncertainty)
    parts = ", ".join(f"{s['name']} {mems[s['name']].total:,.0f} MiB "
                      f"(model {mems[s['name']].model:,.0f} + context {mems[s['name']].context:,.0f} + "
                      f"compute {mems[s['name']].compute:,.0f} + CUDA {mems[s['name']].overhead:,.0f})"
                      for s in on_it)
    fixes = "; ".join(_alternative_text(a) for a in alternatives if a["fits"]) \
        or "no single change fits; move a server to another GPU"
    details = [f"{s['name']} {mems[s['name']].overhead_detail.mib:,.0f} +/- "
               f"{mems[s['name']].overhead_detail.uncertainty_mib:,.0f} MiB" for s in on_it if s["name"] in estimated]
    if details:
        fixes += (f" (CUDA overhead of {gpu['name']} estimated, per process: {', '.join(details)}; "
                  f"run playbooks/calibrate.yml to measure it)")
    return finding(
        "error", "does-not-fit", host["host"], biggest["name"],
        f"cuda:{index} ({gpu['name']}, {capacity:,.0f} MiB) needs {planned:,.0f} MiB: {parts}. "
        f"Fixes for {biggest['name']}: {fixes}",
        device=f"cuda:{index}", planned_mib=round(planned, 1), capacity_mib=capacity, alternatives=alternatives)


def _host_ram(host: dict, mems: dict[str, ServerMemory], gateway_mib: float, findings: list[dict]) -> tuple[dict, dict | None]:
    """The host's RAM: its row (planned use, container limits) and, on the CPU backend, its device row;
    host-memory-overcommitted when the plan, or the containers' limits, exceed the RAM."""
    name, backend = host["host"], host["planned_as"]
    host_mem = host.get("host_memory_mib")
    reserved = float(host.get("host_reserved_mib") or 0)
    # mmap'd weights of one file sit once in the page cache however many servers map them
    shared_weights: dict[str, float] = {}
    private = 0.0
    for server in host["servers"]:
        mem = mems[server["name"]]
        args = effective(server["args"])
        weights = mem.model if backend == "cpu" else mem.host_model
        own = (mem.context + mem.compute if backend == "cpu" else mem.host_compute) + mem.host_output + mem.host_overhead
        cache = mem.host_prompt_cache
        limit = float(server["container_memory_mib"] or math.inf)
        if args.get("load_mode") in ("none", "dio"):
            private += min(weights + own + cache, limit)
        else:
            shared_weights[server["model"]] = max(shared_weights.get(server["model"], 0.0), weights)
            private += min(own + cache, max(limit - weights, 0.0))
    host_planned = sum(shared_weights.values()) + private + gateway_mib + reserved
    limits = sum(s["container_memory_mib"] for s in host["servers"])
    host_out = {"host": name, "memory_mib": host_mem, "reserved_mib": reserved, "gateway_mib": gateway_mib,
                "gpu_stack": None, "planned_mib": round(host_planned, 1), "container_limits_mib": limits}
    device = None
    if backend == "cpu":
        capacity = float(host_mem) if host_mem else math.inf
        device = {"host": name, "device": "cpu", "name": "host RAM",
                  "capacity_mib": host_mem, "planned_mib": round(host_planned, 1),
                  "free_mib": round(capacity - host_planned, 1) if host_mem else None,
                  "fits": host_planned <= capacity, "servers": [s["name"] for s in host["servers"]]}
    gateway_part = f" + gateway {gateway_mib:,.0f}" if gateway_mib else ""
    if host_mem:
        if host_planned > host_mem:
            findings.append(finding(
                "error", "host-memory-overcommitted", name, None,
                f"{name}: planned host RAM {host_planned:,.0f} MiB (weights {sum(shared_weights.values()):,.0f} + "
                f"per-server {private:,.0f}{gateway_part} + reserved {reserved:,.0f}) exceeds {host_mem:,} MiB. "
                f"Fixes: lower cache_ram on chat servers, fewer servers, "
                f"{'fewer llamafleet_gateway_instances, ' if gateway_mib else ''}or more RAM"))
        elif limits + gateway_mib + reserved > host_mem:
            findings.append(finding(
                "warning", "host-memory-overcommitted", name, None,
                f"{name}: container limits add up to {limits:,} MiB{gateway_part} + {reserved:,.0f} MiB reserved > {host_mem:,} MiB "
                f"of RAM; if every container grows to its limit the kernel OOM killer picks a victim. Planned use "
                f"is {host_planned:,.0f} MiB; lower container_memory to what the plan shows each server needs"))
    return host_out, device


def _measured_speed(host: dict, server: dict, gpus: dict[int, dict]) -> dict | None:
    """The speeds playbooks/calibrate.yml measured for this server's model on its device, if any."""
    device_name = gpus[server["gpu"]]["name"] if host["planned_as"] == "cuda" and server["gpu"] in gpus else "cpu"
    return ((host.get("calibration") or {}).get("speed") or {}).get(server["model"], {}).get(device_name)


# The fleet's own CPU per request and per server, measured on the lab machine's cores (not a Celeron)
# at the first user's load, 30 chat requests and 30 embeddings a minute on the simulated first user's
# host (docs/sim.md, "The fleet's own CPU"): LiteLLM 2.73 s and the pools 0.69 s of CPU in 60 s for 60
# requests; the watchdog and its keeper 1.89 s in 60 s for 16 servers.
GATEWAY_CPU_S_PER_REQUEST = (2.73 + 0.69) / 60
WATCHDOG_CPU_SHARE_PER_SERVER = 1.89 / 60 / 16
HOST_CPU_WARN = 0.5   # of the host's cores: the rest is the servers' own launches, sampling and HTTP


def host_cpu(host: dict, gateway_rpm: float | None) -> list[dict]:
    """host-cpu: the host's cores against what the fleet runs on them, when the inventory declares them.

    - The gateway (on a gateway host) and the watchdog, at the lab's measured cost per request and per
      server (above): a slower CPU takes more, so this is a floor.
    - On CUDA, every llama-server waits for its GPU by spinning on a core: the CUDA runtime's default
      schedule (cudaDeviceScheduleAuto) spins while a process has no more CUDA contexts than the host
      has logical processors, and ggml-cuda keeps the default (ggml-cuda.cu sets cudaDeviceScheduleSpin
      for compute capability 12.1 only). With more chat servers than cores, servers decoding at once
      take turns on the cores between their tokens. Not measured on a GPU here.
    A warning when the servers outnumber the cores or the fleet's share passes HOST_CPU_WARN; else info.
    """
    cores = host.get("host_cpu_cores")
    if not cores:
        return []
    chat = [s for s in host["servers"] if s["role"] == "chat"]
    share = len(host["servers"]) * WATCHDOG_CPU_SHARE_PER_SERVER
    parts = [f"the watchdog over {len(host['servers'])} server(s) {share:.1%}"]
    if gateway_rpm:
        gateway = gateway_rpm / 60.0 * GATEWAY_CPU_S_PER_REQUEST
        share += gateway
        parts.insert(0, f"the gateway (LiteLLM and the pools) at {gateway_rpm:g} requests/min {gateway:.1%}")
    text = (f"{host['host']}: {cores} CPU core(s); the fleet's own work takes about {share:.1%} of one core: "
            f"{' and '.join(parts)}, at the cost per request and per server measured on the lab's cores (a slower "
            f"CPU takes more)")
    spins = host["planned_as"] == "cuda" and len(chat) > cores
    if spins:
        text += (f". {len(chat)} chat servers on CUDA outnumber the cores: each llama-server waits for its GPU "
                 f"by spinning on a core (the CUDA runtime's default schedule, which ggml-cuda keeps), so servers "
                 f"decoding at once take turns on the {cores} core(s) between their tokens and decode slower than "
                 f"planned; not measured on a GPU here. Watch the host's CPU under load (playbooks/bench.yml "
                 f"beside `top`); fewer chat servers per host, or a host with more cores, avoids it")
    level = "warning" if spins or share > HOST_CPU_WARN * cores else "info"
    return [finding(level, "host-cpu", host["host"], None, text, cores=cores, fleet_cpu_share=round(share, 4),
                    chat_servers=len(chat))]


def _speeds(host: dict, models: dict[str, ModelInfo], mems: dict[str, ServerMemory], gpus: dict[int, dict],
            pooled: dict[str, dict]) -> dict:
    """Each server's speed for the requests it serves: its pool's shape for a pooled chat server, else
    its host's workload; calibrated where a measurement exists."""
    speeds = {}
    for server in host["servers"]:
        wl = pooled.get(server["model"]) if server["role"] == "chat" and server["model"] in pooled else \
            host["workload"].get(server["model"], {})
        dev = _device_for(gpus.get(server["gpu"]) if host["planned_as"] == "cuda" else None, host)
        prompt = int(wl.get("prompt_tokens", DEFAULT_PROMPT))
        speeds[server["name"]] = server_speed(models[server["model"]], mems[server["name"]], dev, prompt,
                                              int(wl.get("reply_tokens", DEFAULT_REPLY)))
        measured = _measured_speed(host, server, gpus)
        if measured:
            speeds[server["name"]] = calibrated_speed(speeds[server["name"]], measured, prompt)
    return speeds


def _sim_profiles(host: dict, models: dict[str, ModelInfo], mems: dict[str, ServerMemory], gpus: dict[int, dict]) -> dict:
    """What each simulated server sleeps: the plan's (or the calibration's) speeds of the declared card.

    At the reference request rather than the workload's lengths: the profile is the container's
    environment, so a workload edit would otherwise restart every simulated server. For a fully
    offloaded server the lengths barely move it (prefill is a rate; the KV read is a small share
    of a decode step), docs/sim.md.
    """
    profiles = {}
    for server in host["servers"]:
        model, mem = models[server["model"]], mems[server["name"]]
        speed = server_speed(model, mem, _device_for(gpus.get(server["gpu"]), host), DEFAULT_PROMPT, DEFAULT_REPLY)
        measured = _measured_speed(host, server, gpus)
        if measured:
            speed = calibrated_speed(speed, measured, DEFAULT_PROMPT)
        profiles[server["name"]] = sim_profile(speed, model, mem)
    return profiles


def _host_workloads(host: dict, speeds: dict, pooled: dict[str, dict], findings: list[dict]) -> list[dict]:
    """The queueing of each model's chat servers on this host (models outside a gateway pool; a pooled
    model is planned across hosts, gateway_workloads); capacity-exceeded when they cannot keep up."""
    workloads = []
    for model_name, wl in sorted(host["workload"].items()):
        chat = [s for s in host["servers"] if s["model"] == model_name and s["role"] == "chat"]
        if not chat or model_name in pooled:
            continue
        result = workload(model_name, float(wl["requests_per_minute"]), int(wl["prompt_tokens"]),
                          int(wl["reply_tokens"]), [speeds[s["name"]] for s in chat])
        workloads.append(dict(result.to_dict(), host=host["host"]))
        demand = float(wl["requests_per_minute"]) * int(wl["reply_tokens"]) / 60.0
        if not result.stable or result.utilisation > CAPACITY_WARN:
            level = "error" if not result.stable else "warning"
            findings.append(finding(
                level, "capacity-exceeded", host["host"], None,
                f"model {model_name}: {wl['requests_per_minute']} requests/min x {wl['reply_tokens']} reply tokens "
                f"= {demand:.0f} tok/s across {result.slots} slot(s); each request holds a slot "
                f"{result.service_s:.1f} s, utilisation {result.utilisation:.0%}"
                + (" (the queue grows without bound)" if not result.stable else
                   f", TTFT p95 {result.ttft_p95_s:.1f} s")
                + ". Fixes: more slots per server (parallel: 2-4; batched decode reads the weights once for all), "
                  "a smaller quantization, or more servers", model=model_name))
    return workloads


def _server_row(host: dict, server: dict, mem: ServerMemory, speed, gpus: dict[int, dict], findings: list[dict]) -> dict:
    """plan.json's row of one server: memory on its device and the host, layers, KV cache, speed, findings."""
    backend = host["planned_as"]
    detail = mem.overhead_detail
    return {
        "host": host["host"], "name": server["name"], "role": server["role"], "model": server["model"],
        "device": mem.device, "memory_mib": mem.columns(),
        "gpu_name": gpus[server["gpu"]]["name"] if backend == "cuda" and server["gpu"] in gpus else None,
        "overhead_detail": None if not detail else {
            "source": detail.source, "mib": round(detail.mib, 1), "uncertainty_mib": detail.uncertainty_mib,
            "parts": {k: round(float(v), 1) for k, v in detail.parts.items()}},
        "host_memory_mib": {"model": round(mem.host_model if backend == "cuda" else mem.model, 1),
                            "compute": round(mem.host_compute, 1),
                            "output": round(mem.host_output, 1),
                            "prompt_cache": None if math.isinf(mem.host_prompt_cache) else round(mem.host_prompt_cache, 1),
                            "overhead": round(mem.host_overhead, 1),
                            "container_limit": server["container_memory_mib"]},
        "gpu_layers": f"{mem.gpu_layers}/{mem.n_layer}" + ("+output" if mem.output_on_device else "")
                      if backend == "cuda" else "cpu",
        "kv": {"cells": mem.kv.cells_base, "swa_cells": mem.kv.cells_swa, "streams": mem.kv.streams,
               "slots": mem.kv.n_seq, "unified": mem.kv.unified} if mem.kv else None,
        "speed": speed.to_dict(),
        "findings": [f for f in findings if f["server"] == server["name"]],
    }


def _gpu_stack(host: dict, findings: list[dict]) -> dict:
    """The host's driver branch, CUDA toolkit and architectures (one rule: _gpus.gpu_stack); a pin that
    cannot work for its GPUs becomes an error finding here, before any package is installed."""
    stack = gpu_stack(host["gpus"], {key: host.get(key) for key in ("driver_branch", "cuda_version", "cuda_source",
                                                                    "debian_suite", "cuda_architectures")})
    for err in stack["errors"]:
        findings.append(finding("error", err["code"], host["host"], None, f"{host['host']}: {err['message']}"))
    return {k: stack[k] for k in ("driver_branch", "cuda_version", "cuda_source", "cuda_architectures",
                                  "kernel_modules")}


def calibrated_speed(predicted: Speed, measured: dict, prompt_tokens: int) -> Speed:
    """The host's measured decode/prefill (calibrate.yml) in place of the roofline's, for one server.

    Batched decode keeps the model's ratio to single-stream decode (calibrate.yml measures one stream).
    """
    decode, prefill = float(measured["decode_tps"]), float(measured["prefill_tps"])
    batch = predicted.batch_decode_tps * decode / predicted.decode_tps if predicted.decode_tps else decode
    return Speed(decode, prefill, prompt_tokens / prefill + 1.0 / decode, batch, predicted.slots, "calibrated")


def overhead_findings(hname: str, index: int, gpu: dict, capacity: float, planned: float,
                      mems: list[ServerMemory]) -> list[dict]:
    """How sure the verdict on one GPU is: its CUDA overhead estimated, measured or calibrated.

    The servers on one card share its overhead model, so their uncertainties add up.
    """
    details = [m.overhead_detail for m in mems if m.overhead_detail and m.overhead_detail.source != "set"]
    if not details:
        return []
    uncertainty = sum(d.uncertainty_mib for d in details)
    spare = capacity - planned
    per = "; ".join(sorted({d.describe(gpu["name"]) + " per process" for d in details}))
    sources = {d.source for d in details}
    if spare < 0:
        return []  # does-not-fit says what to change
    if "estimated" not in sources:
        return [finding("info", "cuda-overhead-" + sorted(sources)[0], hname, None,
                        f"cuda:{index} ({gpu['name']}) fits with {spare:,.0f} MiB to spare; {per}",
                        device=f"cuda:{index}", spare_mib=round(spare, 1), uncertainty_mib=uncertainty)]
    level = "warning" if spare < uncertainty else "info"
    verdict = (f"fits with {spare:,.0f} MiB to spare" if level == "info" else
               f"fits with only {spare:,.0f} MiB to spare, less than the overhead's uncertainty ({uncertainty:,.0f} MiB "
               f"over {len(details)} process(es)), so it may not fit")
    return [finding(level, "cuda-overhead-estimated", hname, None,
                    f"cuda:{index} ({gpu['name']}) {verdict}; {per}; run playbooks/calibrate.yml on the host "
                    f"to measure it", device=f"cuda:{index}", spare_mib=round(spare, 1), uncertainty_mib=uncertainty)]


def server_findings(host: dict, server: dict, model: ModelInfo, mem: ServerMemory, gpu: dict | None) -> list[dict]:
    """Findings about one server on its own (fit per device is checked with its neighbours)."""
    name, hname = server["name"], host["host"]
    raw = server["args"]
    args = effective(raw)
    out = []

    def add(level, code, message, **data):
        out.append(finding(level, code, hname, name, message, **data))

    batch, ubatch = int(args["batch_size"]), int(args["ubatch_size"])
    if ubatch > batch:
        add("warning", "ubatch-exceeds-batch",
            f"{name}: ubatch_size {ubatch} > batch_size {batch}; llama.cpp silently clamps the physical "
            f"batch to {batch}. Set ubatch_size <= batch_size (e.g. ubatch_size: {batch})")
    if args["cache_type_v"] in QUANTIZED_KV_TYPES and args["flash_attn"] == "off":
        add("error", "quantized-v-needs-flash-attn",
            f"{name}: cache_type_v {args['cache_type_v']} needs flash attention, but flash_attn is off; "
            f"llama.cpp refuses to start. Set flash_attn: on (or auto), or cache_type_v: f16")
    if not model.has_kv_cache and ("cache_type_k" in raw or "cache_type_v" in raw):
        add("info", "kv-cache-type-no-effect",
            f"{name}: {model.architecture} creates no KV cache, so cache_type_k/cache_type_v save 0 MiB; "
            f"remove them (its memory is weights {mem.model:,.0f} MiB + compute {mem.compute:,.0f} MiB)")
    if server["role"] == "embed":
        wl = host["workload"].get(server["model"])
        limit = min(ubatch, batch)
        longest = int(wl["prompt_tokens"]) if wl else (mem.kv.n_ctx_seq if mem.kv else model.n_ctx_train)
        if longest > limit:
            add("error" if wl else "warning", "embed-input-exceeds-ubatch",
                f"{name}: an embedding input must fit in one physical batch; inputs longer than {limit} tokens "
                f"are rejected ('input is too large to process. increase the physical batch size'), and "
                f"{'the workload declares' if wl else 'the context allows'} {longest}. "
                f"Set ubatch_size and batch_size to {longest} (compute buffer grows with it)")
    cache_reuse = int(args.get("cache_reuse", 0))
    if cache_reuse > 0:
        reason = None
        if not model.has_kv_cache:
            reason = f"{model.architecture} has no KV cache"
        elif any(model.swa_layers) and not args.get("swa_full"):
            reason = "its sliding-window cache cannot shift unless swa_full: true"
        elif args.get("cache_prompt") is False:
            reason = "prompt caching is off (cache_prompt: false)"
        if reason:
            add("warning", "cache-reuse-without-shift",
                f"{name}: cache_reuse {cache_reuse} is switched off by llama-server because {reason}. "
                f"Note cache_reuse is the minimum chunk length reused by KV shifting, not a slot count; "
                f"remove it or fix the cause")
    if server["role"] == "chat" and mem.kv and mem.kv.n_seq == 1 and args.get("cont_batching", True):
        add("info", "cont-batching-single-slot",
            f"{name}: continuous batching (on by default) mixes new prompts into other slots' decoding; "
            f"with parallel: 1 there is no other slot, so it does nothing. Use parallel >= 2 for it to help")
    limit = float(server["container_memory_mib"])
    if host["planned_as"] == "cuda":
        need = mem.host_total_without_cache
        parts = (f"CPU weights {mem.host_model:,.0f} + CPU compute {mem.host_compute:,.0f} + "
                 f"output buffer {mem.host_output:,.0f} + process {mem.host_overhead:,.0f}")
    else:
        need = mem.model + mem.context + mem.compute + mem.host_output + mem.host_overhead
        parts = (f"weights {mem.model:,.0f} + KV {mem.context:,.0f} + compute {mem.compute:,.0f} + "
                 f"output buffer {mem.host_output:,.0f} + process {mem.host_overhead:,.0f}")
    if need > limit:
        add("error", "container-memory-too-small",
            f"{name}: needs {need:,.0f} MiB of RAM ({parts}) but container_memory is {server['container_memory']}; "
            f"it would be OOM-killed while loading or at the first long prompt. Set container_memory: "
            f"{math.ceil((need + 64) / 64) * 64}m")
    elif mem.host_prompt_cache and need + mem.host_prompt_cache > limit:
        room = max(int((limit - need) // 64 * 64), 0)
        add("error", "prompt-cache-exceeds-container",
            f"{name}: the host prompt cache may grow to {_fmt(mem.host_prompt_cache)} "
            f"(cache_ram {'default 8192' if 'cache_ram' not in raw else raw['cache_ram']}) on top of "
            f"{need:,.0f} MiB, past container_memory {server['container_memory']} -> OOM kill under load. "
            f"Set cache_ram: {room} (what fits) or 0 to turn it off")
    load_mode = args.get("load_mode", "auto")
    if "mlock" in str(load_mode) and not any(u.startswith("memlock:") for u in server.get("ulimits", [])):
        add("warning", "mlock-without-memlock-limit",
            f"{name}: load_mode {load_mode} asks to lock memory, but Docker's default RLIMIT_MEMLOCK is 64 KiB-8 MiB; "
            f"llama.cpp warns 'failed to mlock' and goes on unlocked. Add ulimits: ['memlock:-1:-1'] or drop mlock")
    if host["planned_as"] == "cuda" and gpu is not None:
        cc = cc_int(gpu["compute_capability"])
        if cc < 70:
            add("info", "cuda-graphs-inactive",
                f"{name}: CUDA graphs are built in but llama.cpp turns them off at run time below compute "
                f"capability 7.0; {gpu['name']} is {gpu['compute_capability']}, so rebuilding 'with CUDA graphs' "
                f"changes nothing here")
        if mem.gpu_layers < mem.n_layer or not mem.output_on_device:
            add("warning", "partial-offload",
                f"{name}: only {mem.gpu_layers}/{mem.n_layer} layers"
                f"{'' if mem.output_on_device else ' (output layer on the CPU)'} are on {gpu['name']}; "
                f"{mem.host_weights:,.0f} MiB of weights are read by the CPU for every token, which dominates decode "
                f"speed. Fit the model (smaller quantization or context) to offload all {mem.n_layer + 1} layers")
    return out


def _alternative_text(alt: dict) -> str:
    text = f"{alt['change']} -> {alt['device_total_mib']:,.0f} MiB"
    if "spare_mib" in alt and alt["fits"]:
        if alt["spare_mib"] < alt.get("uncertainty_mib", 0):
            text += (f" (fits with only {alt['spare_mib']:,.0f} MiB to spare, less than the CUDA overhead's "
                     f"uncertainty of {alt['uncertainty_mib']:,.0f} MiB: it may not fit)")
        else:
            text += f" (fits with {alt['spare_mib']:,.0f} MiB to spare)"
    text += f", {alt['decode_tps']:.1f} tok/s, TTFT {alt['ttft_s']:.1f} s"
    wl = alt.get("workload")
    if wl:
        text += (f", at the declared load {wl['utilisation']:.0%} busy, TTFT p95 {wl['ttft_p95_s']:.1f} s" if wl["stable"]
                 else f", at the declared load {wl['utilisation']:.0%} busy (overloaded)")
    return text


def suggest(host: dict, server: dict, models: dict[str, ModelInfo], mems: dict[str, ServerMemory],
            capacity: float, planned: float, dev: Device, uncertainty: float = 0.0) -> list[dict]:
    """Single changes to one server that would make its GPU fit, cheapest first, with predictions.

    uncertainty: MiB the card's estimated CUDA overhead may be off by; a change that leaves less to
    spare is marked so (uncertainty_mib), still counted as fitting on the planned figures.
    """
    model = models[server["model"]]
    current = mems[server["name"]].total
    others = planned - current
    wl = host["workload"].get(server["model"], {})
    prompt, reply = int(wl.get("prompt_tokens", DEFAULT_PROMPT)), int(wl.get("reply_tokens", DEFAULT_REPLY))
    base_args = dict(server["args"])
    out: list[dict] = []

    def trial(change: str, model_name: str, args: dict) -> dict:
        m = models[model_name]
        mem = _memory(host, server, m, args)
        total = others + mem.total
        speed = server_speed(m, mem, dev, prompt, reply)
        out = {"change": change, "device_total_mib": round(total, 1), "fits": total <= capacity,
               "spare_mib": round(capacity - total, 1), **({"uncertainty_mib": uncertainty} if uncertainty else {}),
               "decode_tps": round(speed.decode_tps, 1), "ttft_s": round(speed.ttft_s, 2),
               "gpu_layers": f"{mem.gpu_layers}/{mem.n_layer}" + ("+output" if mem.output_on_device else "")}
        if wl:
            # the declared load, served by every chat server of this model with the same change
            n_servers = sum(1 for s in host["servers"] if s["model"] == server["model"] and s["role"] == "chat")
            result = workload(server["model"], float(wl["requests_per_minute"]), prompt, reply, [speed] * n_servers)
            out["workload"] = result.to_dict()
        return out

    family = host["models"][server["model"]].get("family")
    same_shape = [n for n, m in models.items() if n != server["model"] and m.architecture == model.architecture
                  and m.n_layer == model.n_layer and m.n_embd == model.n_embd and m.weights_bytes < model.weights_bytes
                  and host["models"][n].get("family") == family]
    for other in sorted(same_shape, key=lambda n: -models[n].weights_bytes):
        out.append(trial(f"model: {other} ({models[other].file_type})", other, base_args))
    eff = effective(base_args)
    if eff["cache_type_k"] != "q4_0" and model.has_kv_cache:
        out.append(trial("cache_type_k/v: q4_0", server["model"],
                         dict(base_args, cache_type_k="q4_0", cache_type_v="q4_0", flash_attn="on")))
    ctx = int(eff["ctx_size"]) or model.n_ctx_train
    for smaller in (ctx * 3 // 4, ctx // 2, ctx // 4):
        if smaller >= 1024 and model.has_kv_cache:
            result = trial(f"ctx_size: {smaller}", server["model"], dict(base_args, ctx_size=smaller))
            out.append(result)
            if result["fits"]:
                break
    n_seq = int(eff["parallel"])
    if n_seq > 1:
        out.append(trial(f"parallel: {n_seq - 1}", server["model"], dict(base_args, parallel=n_seq - 1)))
    for ngl in range(model.n_layer, -1, -1):
        result = trial(f"n_gpu_layers: {ngl}", server["model"], dict(base_args, n_gpu_layers=ngl))
        if result["fits"]:
            out.append(result)
            break
    # A change that fits but cannot carry the load is half a fix: add slots to the first one that
    # fits (with a per-slot KV split, more slots at the same ctx_size cost no KV memory).
    first = next((a for a in out if a["fits"]), None)
    if first and first.get("workload") and first["workload"]["utilisation"] > CAPACITY_WARN and n_seq >= 1:
        fitted = dict(base_args, **_change_args(first["change"], base_args))
        fitted_model = first["change"].split()[1] if first["change"].startswith("model:") else server["model"]
        for slots in (2, 3, 4):
            if slots <= n_seq:
                continue
            out.append(trial(f"{first['change']} + parallel: {slots}", fitted_model, dict(fitted, parallel=slots)))
    return out


def _change_args(change: str, base: dict) -> dict:
    """The args a suggestion label such as 'ctx_size: 4096' stands for (model changes: none)."""
    key, _sep, value = change.partition(": ")
    if key == "cache_type_k/v":
        return {"cache_type_k": value, "cache_type_v": value, "flash_attn": "on"}
    if key in ("ctx_size", "parallel", "n_gpu_layers"):
        return {key: int(value.split()[0])}
    return {}


def pool_load(pool: dict, hosts: list[dict]) -> dict:
    """The declared load of a chat pool and its request shape.

    The pool's own requests_per_minute when given, otherwise the sum of what its servers' hosts
    declare for the model in llamafleet_workload (behind the gateway the same clients arrive in one
    queue); prompt and reply tokens from the pool, else the first host that declares them.
    """
    members = {m["host"] for m in pool["servers"]}
    declared = [h["workload"][pool["model"]] for h in hosts if h["host"] in members and pool["model"] in h["workload"]]
    first = declared[0] if declared else {}
    own = pool["workload"]
    rpm = own.get("requests_per_minute")
    if rpm is None and declared:
        rpm = sum(float(d["requests_per_minute"]) for d in declared)
    return {"requests_per_minute": None if rpm is None else float(rpm),
            "prompt_tokens": int(own.get("prompt_tokens", first.get("prompt_tokens", DEFAULT_PROMPT))),
            "reply_tokens": int(own.get("reply_tokens", first.get("reply_tokens", DEFAULT_REPLY))),
            # the conversation pattern (issue 13), from the first host that declares it
            **{k: first[k] for k in CONVERSATION_KEYS if k in first}}


CONVERSATION_KEYS = ("turns_per_conversation", "shared_prefix_tokens", "active_conversations")


def pool_conversations(pool: dict, load: dict, group: list[Speed], members: list[dict], utilisation: float) -> dict | None:
    """The declared conversation pattern's cache reuse, and TTFT with it, under both routings (_speed.conversation_cache)."""
    turns = load.get("turns_per_conversation")
    if not turns:
        return None
    kv_per_token = [m["memory_mib"]["context"] / max(m["kv"]["cells"] * m["kv"]["streams"], 1)
                    for m in members if m.get("kv")]
    per_token = sum(kv_per_token) / len(kv_per_token) if kv_per_token else 0.0
    slots_per_server = sum(s.slots for s in group) / len(group)
    cache = conversation_cache(load["prompt_tokens"], load["reply_tokens"], int(turns),
                               load.get("shared_prefix_tokens", 0), len(group), slots_per_server, utilisation,
                               per_token, load.get("active_conversations"))
    out = cache.to_dict()
    for name, computed in (("slot_aware", cache.computed_slot_aware), ("affine", cache.computed_affine)):
        adjusted = [with_prompt(s, load["prompt_tokens"], computed) for s in group]
        result = workload(pool["alias"], load["requests_per_minute"], load["prompt_tokens"], load["reply_tokens"], adjusted)
        out[f"ttft_p50_{name}_s"], out[f"ttft_p95_{name}_s"] = result.to_dict()["ttft_p50_s"], result.to_dict()["ttft_p95_s"]
    caches = [m["host_memory_mib"]["prompt_cache"] for m in members]
    out["cache_ram_mib_min"] = min((c for c in caches if c is not None), default=None)
    out["routing"] = pool.get("routing", "leastconn")
    return out


def gateway_workloads(gateway: dict, hosts: list[dict], servers: list[dict]) -> tuple[list[dict], list[dict]]:
    """Queueing of every chat pool at its declared load (pool_load): one M/M/c queue over all slots
    of the group, and beside it the same load under random routing (each server its own queue)."""
    by_name = {(s["host"], s["name"]): s for s in servers}
    speeds = {key: Speed(**s["speed"]) for key, s in by_name.items()}
    rows, findings = [], []
    for pool in gateway["pools"]:
        if pool["role"] != "chat":
            continue
        member_hosts = list(dict.fromkeys(m["host"] for m in pool["servers"]))
        load = pool_load(pool, hosts)
        if load["requests_per_minute"] is None:
            continue
        rpm, prompt, reply = load["requests_per_minute"], load["prompt_tokens"], load["reply_tokens"]
        group = [speeds[(m["host"], m["server"])] for m in pool["servers"]]
        pooled = workload(pool["alias"], rpm, prompt, reply, group)
        scattered = random_routing(pool["alias"], rpm, prompt, reply, group)
        members = [by_name[(m["host"], m["server"])] for m in pool["servers"]]
        try:
            conversations = pool_conversations(pool, load, group, members, pooled.utilisation) if pooled.stable else None
        except ValueError as exc:
            conversations = None
            findings.append(finding("error", "conversation-pattern", "gateway", None,
                                    f"pool {pool['alias']} (model {pool['model']}): llamafleet_workload: {exc}. Fix "
                                    f"prompt_tokens (the mean over a conversation's turns), turns_per_conversation or "
                                    f"shared_prefix_tokens", model=pool["model"]))
        rows.append(dict(pooled.to_dict(), host="gateway", pool=pool["alias"], servers=len(group),
                         # the last request a full queue admits waits for this many requests ahead of it to end
                         max_queue=pool["max_queue"],
                         queue_full_wait_s=round(pool["max_queue"] * pooled.service_s / max(pooled.slots, 1), 2),
                         random_routing={"ttft_p50_s": scattered.to_dict()["ttft_p50_s"],
                                         "ttft_p95_s": scattered.to_dict()["ttft_p95_s"],
                                         "utilisation_max": round(scattered.utilisation, 3),
                                         "stable": scattered.stable},
                         **({"conversations": conversations} if conversations else {})))
        need = (conversations or {}).get("cache_mib_needed")
        have = (conversations or {}).get("cache_ram_mib_min")
        if need is not None and have is not None and have < need:
            findings.append(finding(
                "warning", "prompt-cache-small", "gateway", None,
                f"pool {pool['alias']} (model {pool['model']}): {load['active_conversations']} active conversations of "
                f"{conversations['kv_mib_per_conversation']:.1f} MiB each need {need:.0f} MiB of prompt cache per server, "
                f"cache_ram gives {have:.0f}: turns will find their history evicted and prefill it again. Raise "
                f"cache_ram on the chat servers to {math.ceil(need)} or more", model=pool["model"]))
        if not pooled.stable or pooled.utilisation > CAPACITY_WARN:
            findings.append(finding(
                "error" if not pooled.stable else "warning", "capacity-exceeded", "gateway", None,
                f"pool {pool['alias']} (model {pool['model']}): {rpm:g} requests/min x {reply} reply tokens across "
                f"{pooled.slots} slot(s) on {', '.join(member_hosts)}; each request holds a slot {pooled.service_s:.1f} s, "
                f"utilisation {pooled.utilisation:.0%}"
                + (" (the queue grows without bound)" if not pooled.stable else f", TTFT p95 {pooled.ttft_p95_s:.1f} s")
                + ". Fixes: more slots per server (parallel: 2-4), a smaller quantization, or more servers in the pool",
                model=pool["model"]))
    return rows, findings


def plan(hosts: list[dict], models: dict[str, dict[str, ModelInfo]],
         gateway: dict | None = None, input_problems: dict | None = None) -> dict:
    """Plan every host. models maps host -> model name -> ModelInfo; gateway is the gateway hosts'
    configuration (see _gateway.pools; a GatewayError refuses it);
    input_problems maps host -> [(code, message)] of the inputs later plays read (_inventory.deploy_input_problems)."""
    result = {"servers": [], "devices": [], "hosts": [], "workloads": [], "findings": []}
    fleet = {host["host"]: fleet_host(host) for host in hosts}
    pools_ = None
    if gateway:
        reach = gateway.get("fleet_hosts", {})
        pools_ = pools(gateway, [dict(reach.get(h, {}), host=h, servers=f["servers"]) for h, f in fleet.items()])
    pooled = {p["model"]: pool_load(p, hosts) for p in (pools_ or {}).get("pools", []) if p["role"] == "chat"}
    gateway_hosts = set((pools_ or {}).get("hosts", []))
    declared = [pool_load(p, hosts)["requests_per_minute"] for p in (pools_ or {}).get("pools", [])]
    gateway_rpm = sum(rpm for rpm in declared if rpm) or None
    for host in hosts:
        on_gateway = host["host"] in gateway_hosts
        part = plan_host(host, models[host["host"]], pooled, pools_["memory_mib"] if on_gateway else 0.0,
                         gateway_rpm if on_gateway else None)
        for key in result:
            result[key].extend(part[key])
        simulate(fleet[host["host"]], part["sim_profiles"])
    result["fleet"] = fleet
    if pools_:
        rows, findings = gateway_workloads(pools_, hosts, result["servers"])
        result["workloads"].extend(rows)
        result["findings"].extend(findings)
        result["gateway"] = pools_
    record_standins(result)
    for host_name, problems in (input_problems or {}).items():
        result["findings"].extend(finding("error", code, host_name, None, f"{host_name}: {message}")
                                  for code, message in problems)
    result["summary"] = {
        "errors": sum(f["level"] == "error" for f in result["findings"]),
        "warnings": sum(f["level"] == "warning" for f in result["findings"]),
        "infos": sum(f["level"] == "info" for f in result["findings"]),
        "fits": all(d["fits"] for d in result["devices"]),
    }
    return result
