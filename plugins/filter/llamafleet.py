# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Thin filters over llamafleet's pure-Python core (plugins/plugin_utils).

Documentation of each filter is in the YAML file of the same name beside this one, so that
``ansible-doc -t filter <name>`` works.
"""
from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import GPUError, describe_gpu
from ansible_collections.llamafleet.fleet.plugins.plugin_utils import _calibration as calibration
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._driver_packages import (
    driver_packages,
    stale_driver_packages,
    supported,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._fleet import image_digest, leaving
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import (
    DEFAULT_INSTANCES,
    DEFAULT_PORT,
    DEFAULT_STATS_PORT,
    GatewayError,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gpus import (
    cuda_elf_missing,
    gpu_differences,
    gpu_stack,
    unresolved_libraries,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import (
    REAL_ONLY_PREFIXES,
    InventoryError,
    api_key_problem,
    build_source_problems,
    deploy_input_problems,
    normalize_host,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._llama_server_flags import PINNED_FLAGS
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import PlanError, describe_model, plan
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._report import console, markdown
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._rolling import (
    RollingError,
    apply_override,
    capacity,
    patterns_of,
    select,
    standin,
    standin_rooms,
    summary,
    validate_bound,
    validate_flags,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import parse_help_flags, render_args, unknown_flags
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._tune import (
    TuneError,
    check,
    plan_errors,
    with_server_args,
)

HOST_KEYS = (
    "llamafleet_backend", "llamafleet_gpus", "llamafleet_models", "llamafleet_servers",
    "llamafleet_server_layout", "llamafleet_host_memory_mib", "llamafleet_host_cpu_cores",
    "llamafleet_host_reserved_mib", "llamafleet_host_cpu", "llamafleet_workload",
    "llamafleet_cuda_overhead_mib", "llamafleet_bind_address", "llamafleet_container_prefix",
    "llamacpp_build_cuda_architectures", "llamacpp_build_cuda_version", "llamacpp_build_cuda_source",
    "llamacpp_build_cuda_debian_suite", "nvidia_driver_branch", "llamacpp_build_source",
)


def _host_vars(hostvars, host: str, server_args: dict | None = None) -> dict:
    hv = hostvars[host]
    out = {}
    # the settings only a real GPU host has come along too: a simulated host refuses them (_inventory)
    for key in [k for k in hv if k in HOST_KEYS or k.startswith(REAL_ONLY_PREFIXES)]:
        out[key] = hv[key]
    if server_args:
        out = with_server_args(out, server_args["role"], server_args["args"])
    return out


def _gateway_config(hostvars, hosts: list, gateway_hosts: list) -> dict | None:
    """The gateway hosts' llamafleet_gateway_* variables and how each fleet host is reached (_gateway.pools)."""
    if not gateway_hosts:
        return None
    first = hostvars[gateway_hosts[0]]

    def where(host: str) -> dict:
        hv = hostvars[host]
        return {"host": host, "connection": hv.get("ansible_connection"), "ansible_host": hv.get("ansible_host"),
                "upstream_address": hv.get("llamafleet_gateway_upstream_address")}

    return {
        "models": first.get("llamafleet_gateway_models"), "key": first.get("llamafleet_gateway_key"),
        "port": first.get("llamafleet_gateway_port", DEFAULT_PORT),
        "stats_port": first.get("llamafleet_gateway_stats_port", DEFAULT_STATS_PORT),
        "instances": first.get("llamafleet_gateway_instances", DEFAULT_INSTANCES),
        "server_key": first.get("llama_server_api_key"),
        "hosts": [where(h) for h in gateway_hosts], "fleet_hosts": {h: where(h) for h in hosts},
    }


def llamafleet_plan(hostvars, hosts: list, cache_dir: str, controller_root: str = ".",
                    gateway_hosts: list | None = None, calibration_dir: str = "",
                    server_args: dict | None = None, rolling: dict | None = None) -> dict:
    """The memory and speed plan and the fleet model of these hosts (plugins/plugin_utils/_plan.py).

    gateway_hosts: the inventory group 'gateway'; its pools are validated and planned (plugin_utils/_gateway.py).
    calibration_dir: where calibrate.yml wrote <host>.json (plugins/plugin_utils/_calibration.py).
    server_args: {role, args}: plan as if every server of that role had these args (playbooks/tune.yml).
    rolling: the rolling restart's controls ({servers, args_override, allow_outage, force, max_regression}):
    the override is merged over the chosen servers' args before planning, and the result gets a `rolling`
    entry (the chosen servers and whether the rest of each one's group carries the load without it).
    """
    normalized, models = [], {}
    problems = []
    for host in hosts:
        try:
            spec = normalize_host(host, _host_vars(hostvars, host, server_args))
        except InventoryError as exc:
            problems.append(str(exc))
            continue
        source = hostvars[host].get("llamacpp_build_source") or {}
        spec["calibration"], spec["calibration_findings"] = calibration.load(
            calibration_dir, host, spec, source.get("ref") if isinstance(source, dict) else None)
        normalized.append(spec)
        models[host] = {}
        for name, model in spec["models"].items():
            try:
                models[host][name] = describe_model(name, model, cache_dir, controller_root,
                                                    stand_in=spec["backend"] == "sim")
            except PlanError as exc:
                problems.append(f"{host}: {exc}")
    if problems:
        raise AnsibleFilterError("\n".join(problems))
    inputs = {spec["host"]: deploy_input_problems(hostvars[spec["host"]], spec["servers"]) for spec in normalized}
    try:
        gateway = _gateway_config(hostvars, hosts, gateway_hosts or [])
        if rolling is None:
            return plan(normalized, models, gateway, inputs)
        problems = validate_flags(rolling)
        if problems:
            raise RollingError(problems)
        bound = validate_bound(rolling.get("max_regression"))
        chosen = select(normalized, patterns_of(rolling.get("servers")))
        previous = plan(normalized, models, gateway, inputs)
        normalized = apply_override(normalized, chosen, rolling.get("args_override"))
        result = plan(normalized, models, gateway, inputs) if rolling.get("args_override") else previous
        speeds = {(s["host"], s["name"]): s["speed"] for s in result["servers"]}
        rows = capacity(normalized, speeds, chosen, bool(rolling.get("allow_outage")), standin_rooms(result, previous))
    except (GatewayError, RollingError) as exc:
        raise AnsibleFilterError(str(exc)) from None
    result["rolling"] = {"servers": [f"{h}.{n}" for h, n in chosen], "args_override": rolling.get("args_override") or {},
                         "max_regression": bound, "capacity": rows}
    return result


def llamafleet_plan_console(plan_result: dict) -> str:
    return console(plan_result)


def llamafleet_plan_markdown(plan_result: dict) -> str:
    return markdown(plan_result)


def llamafleet_rolling_summary(rows: list, override: dict | None = None, pending: list | None = None) -> str:
    """The rolling restart's outcome per server, as text (plugins/plugin_utils/_rolling.py)."""
    return summary(rows, override, pending)


def llamafleet_render_args(args: dict) -> list:
    return render_args(args)


def llamafleet_api_key_problem(value, variable: str) -> str:
    """What is wrong with an API key (the rule the plan applies), or '' when it is good."""
    return api_key_problem(variable, value) or ""


def llamafleet_build_source_problems(source) -> list:
    """What is wrong with llamacpp_build_source (the rule the plan applies): [] when it is good."""
    return build_source_problems(source)


def llamafleet_unknown_flags(args: dict, help_text: str) -> list:
    """Flags of args the built llama-server does not know, with hints: [] when all are known."""
    return [f"{u.flag} (args.{u.key}): {u.hint}" for u in unknown_flags(args, parse_help_flags(help_text))]


def _gpus(gpus: list, where: str = "llamafleet_gpus") -> list:
    try:
        return [describe_gpu(g, f"{where}[{i}]") for i, g in enumerate(gpus or [])]
    except GPUError as exc:
        raise AnsibleFilterError(str(exc)) from None


def llamafleet_gpu_stack(gpus: list, pins: dict | None = None) -> dict:
    """Driver branch, CUDA toolkit, CMAKE_CUDA_ARCHITECTURES and kernel modules for the declared GPUs."""
    return gpu_stack(_gpus(gpus), pins or {})


def llamafleet_gpu_differences(observed: list, declared: list) -> list:
    """What differs between the GPUs nvidia_gpu_info found and llamafleet_gpus: [] when they match."""
    return gpu_differences(_gpus(declared), observed or [])


def llamafleet_nvidia_driver_packages(stack: dict, distribution: str, version: str, source: str,
                                      kernel_release: str, repo_url: str = "") -> dict:
    """Packages, NVIDIA repository directory and apt pin for a gpu_stack on this distribution."""
    return driver_packages(distribution, version, source, stack["driver_branch"], stack["kernel_modules"],
                           kernel_release, repo_url)


def llamafleet_nvidia_repo_dist(distribution: str, version: str):
    """debian12, ubuntu2204 or ubuntu2404 for a supported distribution (Ansible's facts), else None."""
    return supported(distribution, version)


def llamafleet_stale_driver_packages(installed: str, branch) -> list:
    """Installed driver packages of another branch (dpkg-query '${Package} ${Version}' lines)."""
    return stale_driver_packages(installed, int(branch))


def llamafleet_image_digest(inputs) -> str:
    """The digest part of a built image's tag, from the text of its inputs (plugins/plugin_utils/_fleet.py)."""
    try:
        return image_digest(inputs)
    except TypeError as err:
        raise AnsibleFilterError(f"image_digest: {err}") from err


def llamafleet_unresolved_libraries(ldd_output: str) -> list:
    """Libraries `ldd` cannot find in an image, less libcuda (the host driver's)."""
    return unresolved_libraries(ldd_output)


def llamafleet_cuda_elf_missing(listing: str, architectures: str) -> list:
    """Real architectures of CMAKE_CUDA_ARCHITECTURES missing from a `cuobjdump --list-elf` listing."""
    return cuda_elf_missing(listing, architectures)


def llamafleet_calibration(measurements: dict, plan_result: dict, host: str) -> dict:
    """The calibration file of one host from what calibrate.yml read there (plugins/plugin_utils/_calibration.py)."""
    servers = [s for s in plan_result["servers"] if s["host"] == host]
    try:
        return calibration.build(host, measurements["backend"], measurements["llama_cpp"], measurements.get("driver"),
                                 servers, measurements["processes"], measurements.get("compute_apps", ""),
                                 measurements.get("timings", {}), measurements["measured_at"])
    except (KeyError, ValueError) as exc:
        raise AnsibleFilterError(f"calibration of {host}: {exc}") from None


def llamafleet_rolling_standin(server: dict, offset: int) -> dict:
    """The stand-in copy of a running server on its port + offset (plugins/plugin_utils/_rolling.py)."""
    try:
        return standin(server, offset)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from None


def llamafleet_tune_problems(knob, values, role, objective) -> list:
    """[] when the sweep's settings can work, else the message naming the variable and the fix."""
    try:
        check(knob, values, role, objective)
    except TuneError as exc:
        return [str(exc)]
    return []


def llamafleet_plan_errors(plan_result: dict) -> list:
    """The messages of a plan's error findings."""
    return plan_errors(plan_result)


def llamafleet_pinned_flags(ref: str) -> list:
    """The long flags recorded for a llama.cpp ref (plugin_utils/_llama_server_flags.py), sorted; empty when
    the ref is not recorded."""
    return sorted(PINNED_FLAGS.get(ref, ()))


def llamafleet_leaving_servers(containers: list, servers: list, pools: list, host: str) -> list:
    """This host's llamafleet containers the fleet model no longer declares, each with the pool to drain it
    in (plugins/plugin_utils/_fleet.py)."""
    return leaving(containers, servers, pools, host)


class FilterModule:
    def filters(self):
        return {
            "calibration": llamafleet_calibration,
            "plan": llamafleet_plan,
            "plan_errors": llamafleet_plan_errors,
            "tune_problems": llamafleet_tune_problems,
            "rolling_summary": llamafleet_rolling_summary,
            "rolling_standin": llamafleet_rolling_standin,
            "plan_console": llamafleet_plan_console,
            "plan_markdown": llamafleet_plan_markdown,
            "render_args": llamafleet_render_args,
            "unknown_flags": llamafleet_unknown_flags,
            "api_key_problem": llamafleet_api_key_problem,
            "build_source_problems": llamafleet_build_source_problems,
            "gpu_stack": llamafleet_gpu_stack,
            "gpu_differences": llamafleet_gpu_differences,
            "nvidia_driver_packages": llamafleet_nvidia_driver_packages,
            "stale_driver_packages": llamafleet_stale_driver_packages,
            "nvidia_repo_dist": llamafleet_nvidia_repo_dist,
            "cuda_elf_missing": llamafleet_cuda_elf_missing,
            "unresolved_libraries": llamafleet_unresolved_libraries,
            "image_digest": llamafleet_image_digest,
            "leaving_servers": llamafleet_leaving_servers,
            "pinned_flags": llamafleet_pinned_flags,
        }
