#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: plan
short_description: The memory and speed plan of every GPU and host, and the fleet model, before anything is deployed
description:
  - Runs on the controller (action plugin) and contacts no host. Reads each host's servers and models (GGUF
    metadata from a controller file, a declared shape, or the header behind a URL), predicts llama.cpp's memory
    per server and device, host RAM, speed and the declared workload's queueing, and returns the plan with the
    fleet model every later play applies (see docs/plan.md).
  - The one way a playbook plans. C(playbooks/plan.yml) (imported first by every playbook that changes hosts),
    C(playbooks/tune.yml) and the rolling restart call it, so they plan from the same files.
  - Writes C(plan.json) and C(plan.md) to O(report_dir), in check mode too (they are the controller's record,
    not host state). It does not fail on a plan with errors; C(errors) says how many, and plan.yml refuses them.
version_added: "0.1.0"
author: llamafleet contributors (@llamafleet)
options:
  hosts:
    description: Inventory names to plan; default the group C(llamafleet).
    type: list
    elements: str
  gateway_hosts:
    description:
      - The gateway hosts; default the group C(gateway). Their llamafleet_gateway_* variables are validated,
        the pools are returned under C(gateway), and chat queueing is planned per pool.
    type: list
    elements: str
  report_dir:
    description:
      - Where plan.json and plan.md are written and calibrate.yml's files are read (its C(calibration) folder).
      - Default llamafleet_report_dir, else the environment's C(LLAMAFLEET_REPORT_DIR), else C(reports/plan) of the project.
    type: path
  write:
    description: Write plan.json and plan.md (a tune's what-if plans write none).
    type: bool
    default: true
  cache_dir:
    description: Where GGUF descriptions and fetched headers are cached; default C(.cache/gguf-headers) of the project.
    type: path
  controller_root:
    description: The project directory (relative model C(src) paths start there); default the playbook directory's parent.
    type: path
  calibration_dir:
    description:
      - Where playbooks/calibrate.yml wrote one <inventory_hostname>.json per host; a matching file replaces estimated
        CUDA overheads, the process overhead and speeds by measured ones. Default O(report_dir)/calibration.
    type: path
  server_args:
    description: C({role, args}), plan as if every server of that role had these llama-server args (playbooks/tune.yml).
    type: dict
  rolling:
    description:
      - "The rolling restart's controls: servers (names or globs), args_override (knobs merged over those servers' args
        before planning), allow_outage, force, max_regression. The result then has a rolling entry: the chosen servers
        and, per server, its model group, the servers left while it is out and their utilisation at the declared load."
      - A glob matching no server, an invalid override, or a group left without capacity fails the task.
    type: dict
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: It changes no host in any mode; its reports are written in check mode too.
"""

EXAMPLES = r"""
- name: Plan the inventory and write the reports
  llamafleet.fleet.plan:
  register: planned

- name: Plan as if every chat server had parallel 2 (nothing written)
  llamafleet.fleet.plan:
    server_args: {role: chat, args: {parallel: 2}}
    write: false
  register: what_if
"""

RETURN = r"""
plan:
  description: The plan (see docs/plan.md for its fields) and, under C(fleet), the fleet model of every host.
  returned: always
  type: dict
report_dir:
  description: Where the reports are (written unless O(write=false)).
  returned: always
  type: str
error_count:
  description: How many findings are errors (the plan refuses the deployment).
  returned: always
  type: int
warning_count:
  description: How many findings are warnings.
  returned: always
  type: int
"""
