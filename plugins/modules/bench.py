#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: bench
short_description: Send a stated load to the fleet and report TTFT, ITL, tokens/s and errors beside the plan
description:
  - Runs on the controller (action plugin). Sends streaming chat requests and embedding requests, open loop
    at a rate (Poisson or constant arrivals) or closed loop at a fixed concurrency, to the gateway or to the
    servers directly; measures every request at the client; scrapes every server's C(/metrics) before and
    after the measured window; writes C(results.json), C(report.md) and PNG plots to O(report_dir).
  - Metric definitions are vLLM benchmark_serving's (TTFT, ITL, TPOT, request throughput); see docs/bench.md.
  - Fails before sending anything when a setting is invalid (the message names the variable).
version_added: "0.1.0"
author: llamafleet contributors (@llamafleet)
options:
  settings:
    description:
      - The llamafleet_bench_* variables without their prefix (rate_per_min, concurrency, duration_s, requests,
        prompt_tokens, reply_tokens, embed_rate_per_min, embed_tokens, arrivals, warmup_requests, timeout_s,
        ignore_eos, seed, users, characters, routing, probe, turns, conversation_header). See docs/bench.md for
        their defaults.
      - C(seed) fixes the prompts, the arrival times and, with C(turns), the random order in which the conversations
        take their turns, so the same seed sends the same requests in the same order.
    type: dict
    default: {}
  servers:
    description:
      - The fleet's servers (llamafleet_fleet.servers of every host, each with C(host) and its C(backend) added).
      - A report on servers of backend C(sim) says that it was measured on simulated servers.
    type: list
    elements: dict
    required: true
  server_key:
    description: The servers' API key (llama_server_api_key), for direct requests and C(/metrics).
    type: str
  gateway_url:
    description: The gateway's base URL; when set, every request goes through it (model = the group's alias).
    type: str
  gateway_key:
    description: The gateway's client key.
    type: str
  gateway_models:
    description: The gateway's model groups (llamafleet_gateway_models), each C({alias, model, role}).
    type: list
    elements: dict
  models:
    description: Only these model groups (aliases or model names); default all.
    type: list
    elements: str
  report_dir:
    description: Where results.json, report.md and the plots are written (created).
    type: path
    required: true
  plan:
    description: The preflight's plan (plan.json); its predictions are evaluated at the measured load.
    type: dict
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: In check mode nothing is sent.
notes:
  - Needs the Python package aiohttp and matplotlib on the controller (requirements.txt).
"""

EXAMPLES = r"""
- name: Bench the lab's servers directly at 40 requests/min for 60 s
  llamafleet.fleet.bench:
    settings: {rate_per_min: 40, duration_s: 60, prompt_tokens: 200, reply_tokens: 64}
    servers: "{{ llamafleet_fleet.servers }}"
    server_key: "{{ llama_server_api_key }}"
    report_dir: reports/bench/manual
"""

RETURN = r"""
report_dir:
  description: Where the report was written.
  returned: always
  type: str
summary:
  description: Figures of all measured requests, per group and per server (TTFT, ITL, TPOT, E2E distributions, throughput).
  returned: always
  type: dict
server_side:
  description: Per server, what its /metrics counters say it did in the measured window.
  returned: always
  type: dict
comparison:
  description: Per chat group, the plan's predictions beside the measured figures with their ratio.
  returned: always
  type: dict
errors:
  description: Number of measured requests that failed.
  returned: always
  type: int
config:
  description: The load's settings as the run used them (rate or concurrency, duration, prompt and reply tokens, ...).
  returned: always
  type: dict
simulated_hosts:
  description: Hosts whose servers are simulated (llamafleet_backend sim); the report says so first.
  returned: always
  type: list
  elements: str
"""
