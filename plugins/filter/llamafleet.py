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
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import pool_alias
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gpus import (
    cuda_elf_missing,
    gpu_differences,
    gpu_stack,
    unresolved_libraries,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import (
    api_key_problem,
    build_source_problems,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._llama_server_flags import PINNED_FLAGS
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._report import console
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._rolling import (
    standin,
    summary,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import parse_help_flags, render_args, unknown_flags
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._tune import (
    TuneError,
    check,
    plan_errors,
)


def llamafleet_plan_console(plan_result: dict) -> str:
    return console(plan_result)


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


def llamafleet_pool_alias(pools: list, model: str, role: str) -> str:
    """The pool of a model group, '' when none holds it (_gateway.pool_alias)."""
    return pool_alias(pools, model, role) or ""


class FilterModule:
    def filters(self):
        return {
            "calibration": llamafleet_calibration,
            "plan_errors": llamafleet_plan_errors,
            "tune_problems": llamafleet_tune_problems,
            "rolling_summary": llamafleet_rolling_summary,
            "rolling_standin": llamafleet_rolling_standin,
            "plan_console": llamafleet_plan_console,
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
            "pool_alias": llamafleet_pool_alias,
            "pinned_flags": llamafleet_pinned_flags,
        }
