#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: tune_report
short_description: Write a tune sweep's comparison (tune.md, tune.json, tune.png) and pick the best value
description:
  - Runs on the controller (action plugin), after playbooks/tune.yml benched each value.
  - Per value, the plan's prediction, the bench's measurement and their ratio (TTFT p50/p95, tokens/s per
    request, utilisation); the best value by the objective among values benched without errors, as the
    inventory change to make. Writes nothing to the inventory.
version_added: "0.1.0"
author: llamafleet contributors (@llamafleet)
options:
  runs:
    description: One dict per value, in sweep order, each with C(value), C(errors), C(output_tps), and the bench's C(config) and C(comparison).
    type: list
    elements: dict
    required: true
  knob:
    description: The llama-server argument swept.
    type: str
    required: true
  role:
    description: The role of the servers it was set on.
    type: str
    default: chat
  group:
    description: The chat model group compared; default the first one the bench compared.
    type: str
  objective:
    description: What "best" means.
    type: str
    choices: [ttft_p95, ttft_p50, tokens_per_s]
    default: ttft_p95
  report_dir:
    description: Where tune.md, tune.json and tune.png are written (created).
    type: path
    required: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Writes the controller's report in check mode too; changes no host.
notes:
  - Needs the Python package matplotlib on the controller (requirements.txt).
"""

EXAMPLES = r"""
- name: Compare the values
  llamafleet.fleet.tune_report:
    runs: "{{ llamafleet_tune__runs }}"
    knob: parallel
    report_dir: reports/tune/20261127T170000Z
"""

RETURN = r"""
report_dir:
  description: Where the report was written.
  returned: always
  type: str
best:
  description: The best value, or null when every value had errors.
  returned: always
  type: raw
group:
  description: The model group compared.
  returned: always
  type: str
msg:
  description: tune.md, line by line.
  returned: always
  type: list
  elements: str
"""
