# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The typed server inventory: validation and the per-GPU layout expansion.

One host's llamafleet_* variables in, a normalized description out, or an InventoryError that
lists every problem with the variable's name and what would be valid. Nothing here touches a
host; the preflight play runs it before any role changes anything.
"""
from __future__ import annotations

import copy
import ipaddress
import os
import re

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import GPUError, describe_gpu
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._llama_server_flags import PINNED_FLAGS
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import ArgsError, unknown_flags, validate_args

ROLES = ("chat", "embed")
BACKENDS = ("cpu", "cuda", "sim")
# What the plan computes a backend's memory and speed for. `sim` is planned as the declared cards
# would run it (CUDA), so a simulated fleet is refused where the real one would not fit, and its
# simulated servers take their speeds from that plan (docs/sim.md).
PLANNED_AS = {"cpu": "cpu", "cuda": "cuda", "sim": "cuda"}
# Settings only a real GPU host has: a simulated host installs no driver and builds no CUDA.
REAL_ONLY_PREFIXES = ("nvidia_driver_", "nvidia_container_toolkit_", "llamacpp_build_cuda_",
                      "llamacpp_build_debian_cuda_")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MEMORY_RE = re.compile(r"^([0-9]+)([kmg])$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
SERVER_KEYS = {"name", "role", "model", "gpu", "port", "container_memory", "args", "ulimits"}
LAYOUT_KEYS = {"role", "model", "port_base", "container_memory", "args", "ulimits"}
MODEL_KEYS = {"path", "sha256", "src", "url", "shape", "quantization", "family"}
# An API key travels in an HTTP header (Authorization: Bearer <key>, RFC 7235's token68 characters)
# and sits alone on a line of llama-server's --api-key-file: 16 or more of these characters.
API_KEY_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,}$")
BUILD_SOURCE_TYPES = ("git", "archive")


class InventoryError(ValueError):
    """Every problem found in one host's inventory, one per line."""

    def __init__(self, host: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"inventory of {host} is not valid:\n  - " + "\n  - ".join(problems))


def api_key_problem(variable: str, value) -> str | None:
    """What is wrong with an API key (llama_server_api_key, llamafleet_gateway_key), or None. The key is never shown."""
    if value in (None, ""):
        return (f"{variable} is not set: every request must carry it. Keep it in a vault, e.g. "
                f"`ansible-vault encrypt_string --name {variable} \"$(openssl rand -hex 24)\"`")
    if not isinstance(value, str):
        return f"{variable} must be a string (quote it in YAML), got a {type(value).__name__}"
    if not API_KEY_RE.match(value):
        why = ("contains a space" if " " in value else
               f"has {len(value)} characters" if len(value) < 16 else "contains other characters")
        return (f"{variable} must be 16 or more letters, digits or ._~+/=- (it travels in an HTTP header); "
                f"it {why}. Generate one with `openssl rand -hex 24`")
    return None


def build_source_problems(source) -> list[str]:
    """What is wrong with llamacpp_build_source (where llama.cpp comes from), with the fix."""
    example = ("e.g. {type: git, repo_url: <your llama.cpp mirror>, ref: b6700} or "
               "{type: archive, archive: <tarball on the controller>, subdir: <tree inside it>, ref: <its commit>}")
    if not isinstance(source, dict) or not source:
        return [f"llamacpp_build_source is not set: say where llama.cpp comes from, {example}"]
    problems = []
    kind = source.get("type")
    if kind not in BUILD_SOURCE_TYPES:
        problems.append(f"llamacpp_build_source.type must be one of {', '.join(BUILD_SOURCE_TYPES)}, got {kind!r}")
    if not source.get("ref"):
        problems.append("llamacpp_build_source.ref is not set: the tag, branch or commit to build (also the image "
                        "tag's first part)")
    if kind == "git" and not source.get("repo_url"):
        problems.append("llamacpp_build_source.repo_url is not set: the git repository the hosts clone llama.cpp from")
    if kind == "archive":
        archive = source.get("archive")
        if not archive:
            problems.append("llamacpp_build_source.archive is not set: a llama.cpp source tarball on the controller")
        elif not str(archive).startswith("/"):
            problems.append(f"llamacpp_build_source.archive must be an absolute path on the controller, got "
                            f"{archive!r} (e.g. \"{{{{ inventory_dir }}}}/../sources/llama.cpp.tar.gz\")")
        elif not os.path.isfile(archive):
            problems.append(f"llamacpp_build_source.archive {archive} does not exist on the controller "
                            f"(the lab's is downloaded by scripts/bootstrap.sh)")
    return problems


def deploy_input_problems(hv: dict, servers: list[dict] = ()) -> list[tuple[str, str]]:
    """(finding code, message) for the inputs that later plays read from a fleet host's variables:
    the servers' API key, the llama.cpp source, and every server's flags against the llama-server of
    that source's ref where its flags are recorded (_llama_server_flags; the role checks the built
    binary's --help again). The plan reports them as errors, so that nothing is installed, built or
    started with an input a later play would refuse."""
    source = hv.get("llamacpp_build_source")
    # a simulated host builds nothing from the source: its ref alone is checked (_sim_problems)
    simulated = hv.get("llamafleet_backend") == "sim"
    out = [] if simulated else [("build-source-invalid", problem) for problem in build_source_problems(source)]
    key = api_key_problem("llama_server_api_key", hv.get("llama_server_api_key"))
    if key:
        out.append(("api-key-invalid", key))
    ref = source.get("ref") if isinstance(source, dict) else None
    known = PINNED_FLAGS.get(ref)
    for server in servers if known else ():
        out.extend(("flag-unknown", f"server {server['name']}: llama-server {ref} does not know {u.flag} "
                                    f"(args.{u.key}): {u.hint}") for u in unknown_flags(server["args"], known))
    return out


def memory_mib(value: str) -> int:
    """'1536m' / '2g' / '524288k' -> MiB (Docker's memory limit syntax, lower case)."""
    match = MEMORY_RE.match(str(value))
    if not match:
        raise ValueError(value)
    number, unit = int(match.group(1)), match.group(2)
    return {"k": number // 1024, "m": number, "g": number * 1024}[unit]


def _unknown_keys(where: str, mapping: dict, valid: set[str]) -> list[str]:
    unknown = set(mapping) - valid
    return [f"{where} has unknown keys {sorted(unknown)}; valid: {sorted(valid)}"] if unknown else []


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_layout(layout: dict | None, servers: list | None, gpu_indexes: list[int]) -> list[dict]:
    """Servers from a per-GPU layout, with explicit entries overriding by name.

    A layout entry of role R becomes server ``R-<gpu>`` on each GPU, on port
    ``port_base + <gpu>``. An explicit server with the same name is merged over it (its args
    merged knob by knob); explicit servers with new names are added.
    """
    problems: list[str] = []
    expanded: list[dict] = []
    if layout:
        if not isinstance(layout, dict) or not isinstance(layout.get("per_gpu"), list):
            raise InventoryError("layout", ["llamafleet_server_layout must be a mapping with a per_gpu list"])
        gpus = layout.get("gpus", gpu_indexes)
        if not isinstance(gpus, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
            raise InventoryError("layout", [f"llamafleet_server_layout.gpus must be a list of GPU indexes, got {gpus!r}"])
        for i, entry in enumerate(layout["per_gpu"]):
            where = f"llamafleet_server_layout.per_gpu[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where} must be a mapping")
                continue
            problems.extend(_unknown_keys(where, entry, LAYOUT_KEYS))
            base = entry.get("port_base")
            if isinstance(base, bool) or not isinstance(base, int):
                problems.append(f"{where}.port_base must be an integer (port = port_base + gpu index)")
                continue
            for gpu in gpus:
                server = {k: copy.deepcopy(v) for k, v in entry.items() if k != "port_base"}
                server.update(name=f"{entry.get('role')}-{gpu}", gpu=gpu, port=base + gpu)
                expanded.append(server)
    if problems:
        raise InventoryError("layout", problems)
    by_name = {s["name"]: s for s in expanded}
    for server in servers or []:
        name = server.get("name") if isinstance(server, dict) else None
        if name in by_name:
            merged = _deep_merge(by_name[name], server)
            expanded[expanded.index(by_name[name])] = merged
            by_name[name] = merged
        else:
            expanded.append(copy.deepcopy(server))
    return expanded


WORKLOAD_KEYS = {"requests_per_minute", "prompt_tokens", "reply_tokens",
                 # the conversation pattern (optional): the plan's prompt-cache figures for conversation-affine pools
                 "turns_per_conversation", "shared_prefix_tokens", "active_conversations"}


def _conversation_problems(where: str, spec: dict) -> list[str]:
    """The optional conversation pattern of a workload: whole numbers, the shared prefix inside the prompt."""
    problems = _unknown_keys(where, spec, WORKLOAD_KEYS)
    for key, least in (("turns_per_conversation", 1), ("shared_prefix_tokens", 0), ("active_conversations", 1)):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            problems.append(f"{where}.{key} must be a whole number >= {least}, got {value!r}")
    shared, prompt = spec.get("shared_prefix_tokens"), spec.get("prompt_tokens")
    if isinstance(shared, int) and isinstance(prompt, (int, float)) and not isinstance(shared, bool) and shared >= prompt:
        problems.append(f"{where}.shared_prefix_tokens ({shared}) must be below prompt_tokens ({prompt}): the shared "
                        f"prefix (system prompt, character card) is part of every prompt")
    if ("shared_prefix_tokens" in spec or "active_conversations" in spec) and "turns_per_conversation" not in spec:
        problems.append(f"{where}: shared_prefix_tokens and active_conversations describe conversations; set "
                        f"turns_per_conversation too (1 for single requests)")
    return problems


def _sim_problems(hv: dict) -> list[str]:
    """What a simulated host (llamafleet_backend: sim) cannot have: settings of a real GPU host, and a
    llama.cpp ref whose flags are not recorded (the simulator refuses exactly the flags that ref's
    llama-server refuses, so it must know them)."""
    problems = [f"{key} is set, but llamafleet_backend sim installs no NVIDIA software and builds no CUDA: "
                f"remove {key} from this host's variables (or set llamafleet_backend: cuda)"
                for key in sorted(hv) if key.startswith(REAL_ONLY_PREFIXES)]
    source = hv.get("llamacpp_build_source")
    ref = source.get("ref") if isinstance(source, dict) else None
    if ref not in PINNED_FLAGS:
        problems.append(f"llamacpp_build_source.ref {ref!r}: llamafleet_backend sim simulates the llama-server of a ref "
                        f"whose flags are recorded ({', '.join(sorted(PINNED_FLAGS))}); set that ref, or record "
                        f"this one in plugins/plugin_utils/_llama_server_flags.py")
    return problems


def normalize_host(host: str, hv: dict) -> dict:
    """Validate one host's llamafleet_* variables and return the normalized description."""
    problems: list[str] = []
    backend = hv.get("llamafleet_backend", "cpu")
    if backend not in BACKENDS:
        problems.append(f"llamafleet_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")

    gpus: list[dict] = []
    raw_gpus = hv.get("llamafleet_gpus", [])
    if not isinstance(raw_gpus, list):
        problems.append("llamafleet_gpus must be a list of {index, name, ...}")
        raw_gpus = []
    for i, gpu in enumerate(raw_gpus):
        try:
            gpus.append(describe_gpu(gpu, f"llamafleet_gpus[{i}]"))
        except GPUError as exc:
            problems.append(str(exc))
    indexes = [g["index"] for g in gpus]
    if len(set(indexes)) != len(indexes):
        problems.append(f"llamafleet_gpus has duplicate indexes {indexes}")
    if backend in ("cuda", "sim") and not raw_gpus:
        problems.append(f"llamafleet_backend is {backend} but llamafleet_gpus is empty: declare the GPUs "
                        "(index, name; memory_mib etc. when the name is not in the catalogue)")
    if backend == "sim":
        problems.extend(_sim_problems(hv))

    models = hv.get("llamafleet_models", {})
    if not isinstance(models, dict) or not models:
        problems.append("llamafleet_models must be a non-empty mapping of model name -> {path, sha256, ...}")
        models = {}
    for name, spec in models.items():
        where = f"llamafleet_models.{name}"
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a mapping with path and sha256")
            continue
        problems.extend(_unknown_keys(where, spec, MODEL_KEYS))
        path = spec.get("path")
        if not isinstance(path, str) or not path.startswith("/") or not path.endswith(".gguf"):
            problems.append(f"{where}.path must be an absolute path to a .gguf file on the host, got {path!r}")
        sha = spec.get("sha256")
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            problems.append(f"{where}.sha256 must be 64 lower-case hex digits, got {sha!r}")
        if "src" in spec and "url" in spec:
            problems.append(f"{where}: give src (a file on the controller) or url, not both")

    try:
        servers = expand_layout(hv.get("llamafleet_server_layout"), hv.get("llamafleet_servers", []),
                                indexes or [0])
    except InventoryError as exc:
        problems.extend(exc.problems)
        servers = []
    if not isinstance(hv.get("llamafleet_servers", []), list):
        problems.append("llamafleet_servers must be a list of servers")
        servers = []
    if not servers:
        problems.append("no servers: set llamafleet_servers and/or llamafleet_server_layout")

    seen_names: dict[str, int] = {}
    seen_ports: dict[int, str] = {}
    clean_servers = []
    for i, server in enumerate(servers):
        where = f"llamafleet_servers[{i}]"
        if not isinstance(server, dict):
            problems.append(f"{where} must be a mapping")
            continue
        name = server.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            problems.append(f"{where}.name must match {NAME_RE.pattern}, got {name!r}")
            continue
        where = f"server {name}"
        problems.extend(_unknown_keys(where, server, SERVER_KEYS))
        if name in seen_names:
            problems.append(f"{where}: the name is used twice")
        seen_names[name] = i
        role = server.get("role")
        if role not in ROLES:
            problems.append(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        model = server.get("model")
        if model not in models:
            problems.append(f"{where}.model '{model}' is not in llamafleet_models "
                            f"(defined: {', '.join(sorted(models)) or 'none'})")
        port = server.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            problems.append(f"{where}.port must be an integer in 1024..65535, got {port!r}")
        elif port in seen_ports:
            problems.append(f"{where}.port {port} is already used by server {seen_ports[port]}")
        else:
            seen_ports[port] = name
        gpu = server.get("gpu")
        if backend in ("cuda", "sim"):
            if isinstance(gpu, bool) or not isinstance(gpu, int):
                problems.append(f"{where}.gpu must be the index of one of llamafleet_gpus ({indexes}), got {gpu!r}")
            elif gpu not in indexes:
                problems.append(f"{where}.gpu {gpu} does not exist on {host}: llamafleet_gpus has indexes {indexes}")
        cm = server.get("container_memory")
        try:
            cm_mib = memory_mib(cm)
        except ValueError:
            problems.append(f"{where}.container_memory must look like 1536m or 2g, got {cm!r}")
            cm_mib = 0
        try:
            args = validate_args(name, server.get("args", {}) or {})
        except ArgsError as exc:
            problems.append(str(exc))
            args = {}
        if role == "embed":
            if args.get("embeddings") is False:
                problems.append(f"{where}: an embed server needs embeddings; remove args.embeddings: false")
            args["embeddings"] = True  # what makes it an embedding server: the one place this is said
        ulimits = server.get("ulimits", [])
        if not isinstance(ulimits, list) or not all(isinstance(u, str) and u.count(":") == 2 for u in ulimits):
            problems.append(f"{where}.ulimits must be a list like ['memlock:-1:-1'], got {ulimits!r}")
            ulimits = []
        clean_servers.append({"name": name, "role": role, "model": model, "gpu": gpu if backend in ("cuda", "sim") else None,
                              "port": port, "container_memory": cm, "container_memory_mib": cm_mib,
                              "args": args, "ulimits": ulimits})

    bind_address = hv.get("llamafleet_bind_address", "127.0.0.1")
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        problems.append(f"llamafleet_bind_address must be an IP address the servers listen on, got {bind_address!r}")
    prefix = hv.get("llamafleet_container_prefix", "llamafleet-")
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        problems.append(f"llamafleet_container_prefix must match {PREFIX_RE.pattern} (a Docker name prefix), got {prefix!r}")

    for key in ("llamafleet_host_memory_mib", "llamafleet_host_cpu_cores"):
        value = hv.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            problems.append(f"{key} must be a positive integer, got {value!r}")

    workload = hv.get("llamafleet_workload", {}) or {}
    if not isinstance(workload, dict):
        problems.append("llamafleet_workload must map model name -> {requests_per_minute, prompt_tokens, reply_tokens}")
        workload = {}
    for model, spec in workload.items():
        where = f"llamafleet_workload.{model}"
        if model not in models:
            problems.append(f"{where}: '{model}' is not in llamafleet_models")
        if not isinstance(spec, dict):
            problems.append(f"{where} must be a mapping")
            continue
        for key in ("requests_per_minute", "prompt_tokens", "reply_tokens"):
            value = spec.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"{where}.{key} must be a positive number, got {value!r}")
        problems.extend(_conversation_problems(where, spec))

    if problems:
        raise InventoryError(host, problems)
    return {
        "host": host, "backend": backend, "planned_as": PLANNED_AS.get(backend, "cpu"), "gpus": gpus, "models": models, "servers": clean_servers,
        "bind_address": bind_address, "container_prefix": prefix,
        "host_memory_mib": hv.get("llamafleet_host_memory_mib"),
        "host_cpu_cores": hv.get("llamafleet_host_cpu_cores"),
        "host_reserved_mib": hv.get("llamafleet_host_reserved_mib", 1024),
        "host_cpu": hv.get("llamafleet_host_cpu", {}) or {},
        "workload": workload,
        "cuda_overhead_mib": hv.get("llamafleet_cuda_overhead_mib"),
        "cuda_architectures": hv.get("llamacpp_build_cuda_architectures"),
        "cuda_version": hv.get("llamacpp_build_cuda_version"),
        "cuda_source": hv.get("llamacpp_build_cuda_source"),
        "debian_suite": hv.get("llamacpp_build_cuda_debian_suite"),
        "driver_branch": hv.get("nvidia_driver_branch"),
    }
