#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_gpu_facts
short_description: The NVIDIA GPUs a host has, from nvidia-smi, checked against the declared ones
description:
  - Runs nvidia-smi once and returns every GPU's index, name, total memory (MiB), compute
    capability and the driver version.
  - With O(declared), compares them with the inventory's llamafleet_gpus (completed from the
    catalogue) and fails, naming each difference, when the plan was made for other hardware.
version_added: "0.1.0"
author: llamafleet contributors (@llamafleet)
options:
  declared:
    description: llamafleet_gpus as the plan used them (index, name, memory_mib, compute_capability).
    type: list
    elements: dict
  nvidia_smi:
    description: The nvidia-smi executable.
    type: str
    default: nvidia-smi
attributes:
  check_mode:
    support: full
    description: Reads only; nothing on the host changes.
notes:
  - Read-only. Needs the NVIDIA driver on the host.
"""

EXAMPLES = r"""
- name: Check that the GPUs are the ones the plan was made for
  nvidia_gpu_facts:
    declared: "{{ llamafleet_gpus }}"
  register: gpus
"""

RETURN = r"""
gpus:
  description: One entry per GPU.
  returned: success
  type: list
  elements: dict
  sample: [{index: 0, name: P106-100, memory_mib: 6063, compute_capability: "6.1", driver_version: "580.95.05"}]
driver_version:
  description: Driver version of the first GPU.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import (
    NVIDIA_SMI_QUERY,
    GPUError,
    compare_gpus,
    describe_gpu,
    parse_nvidia_smi,
)


def main():
    module = AnsibleModule(argument_spec={"declared": {"type": "list", "elements": "dict"},
                                          "nvidia_smi": {"type": "str", "default": "nvidia-smi"}},
                           supports_check_mode=True)
    binary = module.get_bin_path(module.params["nvidia_smi"])
    if binary is None:
        module.fail_json(msg=f"{module.params['nvidia_smi']} is not on this host: install the NVIDIA driver "
                             f"(branch 580 for Pascal) before deploying the cuda backend")
    rc, out, err = module.run_command([binary, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"])
    if rc != 0:
        module.fail_json(msg=f"nvidia-smi failed (rc {rc}): {err.strip() or out.strip()}")
    try:
        gpus = parse_nvidia_smi(out)
        declared = [describe_gpu(g, f"llamafleet_gpus[{i}]") for i, g in enumerate(module.params["declared"] or [])]
    except GPUError as exc:
        module.fail_json(msg=str(exc))
    result = {"changed": False, "gpus": gpus, "driver_version": gpus[0]["driver_version"] if gpus else ""}
    if module.params["declared"] is not None:
        problems = compare_gpus(declared, gpus)
        if problems:
            module.fail_json(msg="the host's GPUs are not the ones the plan was made for: " + "; ".join(problems),
                             problems=problems, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
