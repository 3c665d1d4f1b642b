#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_gpu_info
short_description: The NVIDIA GPUs of a host, as nvidia-smi reports them
description:
  - Runs C(nvidia-smi --query-gpu=... --format=csv,noheader,nounits) once and returns, per GPU, its
    index, name, UUID, PCI bus id, total memory (MiB), compute capability, driver version and PCIe
    link generation and width (current and maximum).
  - Reports, and does not fail on, a host without nvidia-smi, without a loaded driver or without
    GPUs (RV(status) says which); a GPU that answers with error values such as C([GPU requires reset])
    or C(ERR!) has them in its C(errors) and makes RV(status) C(faulty).
  - Comparing the GPUs with the inventory is a separate check, the filter
    llamafleet.fleet.gpu_differences.
version_added: "0.2.0"
author: llamafleet contributors (@llamafleet)
options:
  nvidia_smi:
    description: The nvidia-smi executable (a name on PATH or a path).
    type: str
    default: nvidia-smi
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to diff.
notes:
  - Read-only; runs the same in check mode.
"""

EXAMPLES = r"""
- name: Read the GPUs
  llamafleet.fleet.nvidia_gpu_info:
  register: gpu_info

- name: They must be the ones the plan was made for
  ansible.builtin.assert:
    that: gpu_info.gpus | llamafleet.fleet.gpu_differences(llamafleet_gpus) | length == 0
"""

RETURN = r"""
status:
  description: >-
    ok, faulty (a GPU reports error values), no-devices, driver-not-loaded, no-nvidia-smi, or failed
    (nvidia-smi exited non-zero for another reason; see message).
  returned: always
  type: str
  sample: ok
gpus:
  description: One entry per GPU; a value nvidia-smi cannot give is null.
  returned: always
  type: list
  elements: dict
  sample:
    - index: 0
      name: P106-100
      uuid: GPU-3a1c8e52-6f0b-4d7e-9a41-1b2c3d4e5f60
      pci_bus_id: "00000000:01:00.0"
      memory_mib: 6075
      compute_capability: "6.1"
      driver_version: "580.95.05"
      pcie_link_gen: 1
      pcie_link_gen_max: 3
      pcie_link_width: 1
      pcie_link_width_max: 16
      errors: {}
driver_version:
  description: The driver version nvidia-smi reports (null without a driver).
  returned: always
  type: str
message:
  description: nvidia-smi's own words when status is not ok, or the faulty GPUs' error values.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llamafleet.fleet.plugins.module_utils.nvidia_smi import ARGV, NvidiaSmiError, read


def main():
    module = AnsibleModule(argument_spec={"nvidia_smi": {"type": "str", "default": "nvidia-smi"}},
                           supports_check_mode=True)
    binary = module.get_bin_path(module.params["nvidia_smi"])
    if binary is None:
        module.exit_json(changed=False, status="no-nvidia-smi", gpus=[], driver_version=None,
                         message=f"{module.params['nvidia_smi']} is not on this host (no NVIDIA driver installed)")
    rc, out, err = module.run_command([binary, *ARGV])
    try:
        result = read(rc, out, err)
    except NvidiaSmiError as exc:
        module.fail_json(msg=str(exc), status="failed", gpus=[], driver_version=None, message=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
