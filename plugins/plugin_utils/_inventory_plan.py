# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan of an Ansible inventory: each host's variables read (here only), normalized and planned,
with the gateway's pools, a tune's what-if (server_args) and a rolling restart's override.

The one entry point of every playbook that plans is the action llamafleet.fleet.plan
(plugins/action/plan.py), which calls plan_inventory; the result is plain data (plan.json).
"""
from __future__ import annotations

from ansible_collections.llamafleet.fleet.plugins.plugin_utils import _calibration as calibration
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import (
    DEFAULT_INSTANCES,
    DEFAULT_PORT,
    DEFAULT_STATS_PORT,
    GatewayError,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import (
    REAL_ONLY_PREFIXES,
    InventoryError,
    deploy_input_problems,
    normalize_host,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import PlanError, describe_model, plan
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._rolling import (
    RollingError,
    apply_override,
    capacity,
    patterns_of,
    select,
    standin_rooms,
    validate_bound,
    validate_flags,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._tune import with_server_args


class InventoryPlanError(ValueError):
    """Inputs the plan cannot start from (a host's variables, the gateway, the rolling controls), one per line."""


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


def plan_inventory(hostvars, hosts: list, cache_dir: str, controller_root: str = ".",
                   gateway_hosts: list | None = None, calibration_dir: str = "",
                   server_args: dict | None = None, rolling: dict | None = None) -> dict:
    """The memory and speed plan and the fleet model of these hosts (plugins/plugin_utils/_plan.py).

    hostvars: each host's variables (Ansible's hostvars, or a plain dict of dicts).

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
        raise InventoryPlanError("\n".join(problems))
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
        raise InventoryPlanError(str(exc)) from None
    result["rolling"] = {"servers": [f"{h}.{n}" for h, n in chosen], "args_override": rolling.get("args_override") or {},
                         "max_regression": bound, "capacity": rows}
    return result
