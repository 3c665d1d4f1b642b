#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a llama-server's health and in-flight requests, wait for it, and measure one smoke request."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: llama_server_probe
short_description: Health, in-flight requests and a measured smoke request of one llama-server
version_added: "0.2.0"
description:
  - Reads C(/health), and the requests in flight from C(/metrics) (C(llamacpp:requests_processing), servers
    with C(--metrics)) or else C(/slots) (C(is_processing) per slot).
  - With O(wait_healthy), waits (bounded by O(health_timeout)) until C(/health) answers 200.
  - With O(wait_idle), waits (bounded by O(idle_timeout)) until no request has been in flight for O(idle_quiet)
    seconds; fails with the count still in flight when the bound is reached.
  - With O(smoke=chat), sends O(smoke_runs) streamed chat completions and returns the best TTFT and decode
    tokens/s measured from the client; with O(smoke=embed), embedding requests and their latency.
  - With O(baseline) and O(max_regression), fails when the smoke is worse than the baseline by more than the bound.
  - The logic lives in module_utils/llamafleet_probe.py.
options:
  url:
    description: Base URL of the server (the fleet model's C(url)).
    type: str
    required: true
  api_key:
    description: The servers' API key (C(/slots), C(/metrics) and the API require it).
    type: str
  wait_healthy:
    description: Wait until C(/health) answers 200.
    type: bool
    default: false
  health_timeout:
    description: Seconds O(wait_healthy) waits at most.
    type: int
    default: 300
  started_at:
    description:
      - When the server's container started (Docker's C(State.StartedAt)); with O(wait_healthy), C(load_s) is the time
        from then until C(/health) answered 200 (the model's load time).
    type: str
  wait_idle:
    description: Wait until no request is in flight.
    type: bool
    default: false
  idle_timeout:
    description: Seconds O(wait_idle) waits at most.
    type: int
    default: 120
  idle_quiet:
    description: Seconds with no request in flight that count as idle.
    type: float
    default: 1.0
  smoke:
    description: The smoke request to send and measure.
    type: str
    choices: [none, chat, embed]
    default: none
  smoke_prompt:
    description: The prompt (chat) or input text (embed) of the smoke request.
    type: str
    default: Say hello in five words.
  smoke_max_tokens:
    description: max_tokens of the smoke chat completion.
    type: int
    default: 24
  smoke_runs:
    description: Smoke requests sent; the best TTFT and tokens/s of them are returned (noise only slows a run).
    type: int
    default: 3
  baseline:
    description: A previous result's C(smoke) (C(ttft_s), C(tokens_per_s)) to compare with.
    type: dict
  max_regression:
    description:
      - How much worse than O(baseline) the smoke may be, as a fraction (0.5 = TTFT up to 1.5 x, tokens/s down to
        1/1.5 of the baseline).
      - Required with O(baseline). The rolling restart passes the plan's bound (C(llamafleet_rolling_max_regression),
        1.0 unless set), so the module has no default of its own.
    type: float
attributes:
  check_mode:
    support: full
    description: Reads C(/health) and the requests in flight; waits and smoke requests are not run in check mode.
notes:
  - Never changes the server; C(changed) is always false.
author: llamafleet contributors (@llamafleet)
"""

EXAMPLES = r"""
- name: Baseline of chat-0 before its restart
  llamafleet.fleet.llama_server_probe:
    url: http://127.0.0.1:8101
    api_key: "{{ llama_server_api_key }}"
    smoke: chat
  register: baseline

- name: Wait until chat-0's in-flight requests have finished
  llamafleet.fleet.llama_server_probe:
    url: http://127.0.0.1:8101
    api_key: "{{ llama_server_api_key }}"
    wait_idle: true
    idle_timeout: 120

- name: After the restart, wait for the model and compare with the baseline
  llamafleet.fleet.llama_server_probe:
    url: http://127.0.0.1:8101
    api_key: "{{ llama_server_api_key }}"
    wait_healthy: true
    smoke: chat
    baseline: "{{ baseline.smoke }}"
    max_regression: 0.5
"""

RETURN = r"""
health:
  description: HTTP status of C(/health) at the end (200 ready, 503 loading, 0 nothing answers).
  type: int
  returned: always
  sample: 200
in_flight:
  description: Requests in flight at the end (null when the server is not ready).
  type: int
  returned: always
  sample: 0
in_flight_source:
  description: Where C(in_flight) was read, C(metrics) or C(slots).
  type: str
  returned: always
  sample: metrics
health_waited_s:
  description: Seconds O(wait_healthy) waited.
  type: float
  returned: always
load_s:
  description: Seconds from O(started_at) until C(/health) answered 200 (null without O(started_at)).
  type: float
  returned: always
idle_waited_s:
  description: Seconds O(wait_idle) waited.
  type: float
  returned: always
smoke:
  description: The best of the smoke requests (C(ttft_s), C(tokens_per_s), C(tokens), C(runs)); empty without smoke.
  type: dict
  returned: always
  sample: {ttft_s: 0.081, tokens_per_s: 61.2, tokens: 12, runs: 3}
regression:
  description: Why the smoke is worse than the baseline past the bound (empty when it is not).
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_probe import (
    ProbeError,
    best_of,
    health,
    in_flight,
    regression,
    seconds_since,
    smoke_chat,
    smoke_embed,
    wait_healthy,
    wait_idle,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "api_key": {"type": "str", "no_log": True},
            "wait_healthy": {"type": "bool", "default": False},
            "health_timeout": {"type": "int", "default": 300},
            "started_at": {"type": "str"},
            "wait_idle": {"type": "bool", "default": False},
            "idle_timeout": {"type": "int", "default": 120},
            "idle_quiet": {"type": "float", "default": 1.0},
            "smoke": {"type": "str", "choices": ["none", "chat", "embed"], "default": "none"},
            "smoke_prompt": {"type": "str", "default": "Say hello in five words."},
            "smoke_max_tokens": {"type": "int", "default": 24, "no_log": False},
            "smoke_runs": {"type": "int", "default": 3},
            "baseline": {"type": "dict"},
            # no default of its own: the caller passes the plan's bound (_rolling.DEFAULT_MAX_REGRESSION
            # unless the operator set llamafleet_rolling_max_regression), so the rule lives in one place
            "max_regression": {"type": "float"},
        },
        required_by={"baseline": ("max_regression",)},
        supports_check_mode=True,
    )
    p = module.params
    url = p["url"].rstrip("/")
    for key in ("health_timeout", "idle_timeout", "smoke_runs"):
        if p[key] < (1 if key == "smoke_runs" else 0):
            module.fail_json(msg=f"{key} must be {'1' if key == 'smoke_runs' else '0'} or more, got {p[key]}")
    if p["max_regression"] is not None and p["max_regression"] < 0:
        module.fail_json(msg=f"max_regression must be a fraction of 0 or more (0.5 = 50 % worse), got {p['max_regression']}")
    result = {"changed": False, "health_waited_s": 0.0, "load_s": None, "idle_waited_s": 0.0, "smoke": {}, "regression": []}
    act = not module.check_mode
    try:
        if p["wait_healthy"] and act:
            result["health_waited_s"] = round(wait_healthy(url, p["health_timeout"]), 2)
            if p["started_at"]:
                result["load_s"] = round(seconds_since(p["started_at"]), 2)
        if p["wait_idle"] and act:
            waited, _last = wait_idle(url, p["api_key"], p["idle_timeout"], p["idle_quiet"])
            result["idle_waited_s"] = round(waited, 2)
        if p["smoke"] != "none" and act:
            send = smoke_chat if p["smoke"] == "chat" else smoke_embed
            args = (p["smoke_max_tokens"],) if p["smoke"] == "chat" else ()
            result["smoke"] = best_of([send(url, p["api_key"], p["smoke_prompt"], *args) for _run in range(p["smoke_runs"])])
        result["health"] = health(url)
        result["in_flight"], result["in_flight_source"] = (
            in_flight(url, p["api_key"]) if result["health"] == 200 else (None, ""))
    except ProbeError as exc:
        module.fail_json(msg=str(exc), **result)
    if p["baseline"] and result["smoke"]:
        result["regression"] = regression(p["baseline"], result["smoke"], p["max_regression"])
        if result["regression"]:
            module.fail_json(msg=f"{url}: the smoke request is worse than the baseline past max_regression "
                                 f"{p['max_regression']:g}: " + "; ".join(result["regression"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
