"""The first user's host, simulated (inventory/rehearsal, docs/sim.md): brought up by site.yml and taken
down again, for the rehearsal tests (tests/integration/test_rehearsal.py, tests/rehearsals/)."""
from __future__ import annotations

import json
import os
import subprocess

from tests.integration.conftest import playbook

INVENTORY = "inventory/rehearsal"
HOST = "first-user-sim"
GATEWAY_PORT, GATEWAY_KEY = 4500, "sk-llamafleet-rehearsal-gateway-key"
# every container the rehearsal runs besides its servers (inventory/rehearsal/group_vars)
OTHERS = ["llamafleet-rehearsal-litellm-0", "llamafleet-rehearsal-litellm-1", "llamafleet-rehearsal-pools",
          "llamafleet-rehearsal-watchdog", "llamafleet-rehearsal-watchdog-keeper", "llamafleet-rehearsal-prometheus"]


def sim_containers() -> dict[str, dict]:
    """`docker inspect` of the rehearsal host's llama-server containers, by server name."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=llamafleet.host={HOST}"], capture_output=True,
                         text=True, check=True).stdout.split()
    out = json.loads(subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout) if ids else []
    return {c["Config"]["Labels"]["llamafleet.server"]: c for c in out}


def bring_up(plan_dir: str, extra: dict | None = None) -> dict:
    """site.yml on the rehearsal inventory, from whatever state the machine was left in (another
    checkout's key included, as the lab fixture allows), with these extra variables: its containers,
    plan and output. Whole groups are recreated at once: no client is under load then."""
    result = playbook("site.yml", "-i", INVENTORY, "-e", json.dumps(dict(extra or {}, llamafleet_report_dir=plan_dir,
                                                                          llama_server_recreate_whole_groups=True)))
    with open(os.path.join(plan_dir, "plan.json"), encoding="utf-8") as handle:
        planned = json.load(handle)
    return {"containers": sim_containers(), "plan": planned, "stdout": result.stdout}


def tear_down() -> None:
    """Remove the rehearsal's containers, so the lab's tests after it have the machine's cores again."""
    names = [c["Name"].lstrip("/") for c in sim_containers().values()] + OTHERS
    subprocess.run(["docker", "rm", "-f", *names], capture_output=True, text=True, check=False)


def bench(report_dir: str, settings: dict) -> dict:
    """playbooks/bench.yml on the rehearsal with these llamafleet_bench_* settings: results.json, the
    report's text and the play's output."""
    result = playbook("playbooks/bench.yml", "-i", INVENTORY, "-e", json.dumps(dict(settings, llamafleet_report_dir=report_dir)))
    with open(os.path.join(report_dir, "results.json"), encoding="utf-8") as handle:
        run = json.load(handle)
    with open(os.path.join(report_dir, "report.md"), encoding="utf-8") as handle:
        run["_report"] = handle.read()
    run["_stdout"] = result.stdout
    return run
