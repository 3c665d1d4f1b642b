"""The action llamafleet.fleet.plan as a playbook calls it: its options, its defaults, its reports, its errors.

Each case runs ansible-playbook on a one-task playbook against the lab inventory (the action runs on the
controller and contacts no host). Expected values come from the lab inventory itself
(inventory/lab/group_vars/llamafleet/lab.yml: two chat servers with parallel 2, two embedding servers).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from tests.conftest import ROOT


def run_action(tmp_path, options: dict, *extra: str, inventory: str = "inventory/lab") -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run the action once with these options; its registered result (or None when the task failed)."""
    out = tmp_path / "result.json"
    playbook = [{"name": "Plan", "hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [
        {"name": "Plan", "llamafleet.fleet.plan": options, "register": "planned"},
        {"name": "Keep the result", "ansible.builtin.copy": {"content": "{{ planned | to_json }}", "dest": str(out),
                                                             "mode": "0644"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(playbook))
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
                             str(tmp_path / "play.yml"), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return result, json.loads(out.read_text()) if out.exists() else None


def test_it_plans_the_inventory_and_writes_plan_json_and_plan_md_where_llamafleet_report_dir_says(tmp_path):
    reports = tmp_path / "reports"
    result, planned = run_action(tmp_path, {"controller_root": ROOT}, "-e", f"llamafleet_report_dir={reports}")
    assert result.returncode == 0, result.stdout[-3000:]
    assert planned["report_dir"] == str(reports) and planned["error_count"] == 0 and not planned["changed"]
    assert json.loads((reports / "plan.json").read_text()) == planned["plan"]
    assert (reports / "plan.md").read_text().startswith("# ")
    servers = {s["name"]: s for s in planned["plan"]["fleet"]["lab"]["servers"]}
    assert sorted(servers) == ["chat-0", "chat-1", "embed-0", "embed-1"]
    assert servers["chat-0"]["slots"] == 2   # parallel: 2 in the lab inventory
    assert [p["alias"] for p in planned["plan"]["gateway"]["pools"]] == ["lab-chat", "lab-embed"]


def test_a_plan_with_errors_is_returned_with_its_counts_and_the_refusal_left_to_the_play(tmp_path):
    """inventory/production.example is the seed's configuration, which does not fit (docs/plan.md): the action
    returns the plan and its counts; plan.yml's next task refuses it. The counts are not named `warnings`,
    which Ansible reads as messages to print (it warned "Task result `warnings` was <class 'int'>")."""
    result, planned = run_action(tmp_path, {"controller_root": ROOT, "write": False}, inventory="inventory/production.example")
    assert result.returncode == 0, result.stdout[-3000:]
    summary = planned["plan"]["summary"]
    assert summary["errors"] > 0 and summary["warnings"] > 0
    assert (planned["error_count"], planned["warning_count"]) == (summary["errors"], summary["warnings"])
    assert "Task result `warnings`" not in result.stdout + result.stderr


def test_a_what_if_plans_every_server_of_the_role_with_the_args_and_writes_nothing(tmp_path):
    reports = tmp_path / "reports"
    result, planned = run_action(tmp_path, {"controller_root": ROOT, "write": False,
                                            "server_args": {"role": "chat", "args": {"parallel": 1}}},
                                 "-e", f"llamafleet_report_dir={reports}")
    assert result.returncode == 0, result.stdout[-3000:]
    slots = {s["name"]: s["slots"] for s in planned["plan"]["fleet"]["lab"]["servers"]}
    assert slots == {"chat-0": 1, "chat-1": 1, "embed-0": 1, "embed-1": 1}
    assert not reports.exists()


def test_only_the_hosts_asked_for_and_no_gateway(tmp_path):
    result, planned = run_action(tmp_path, {"controller_root": ROOT, "write": False, "hosts": ["lab"], "gateway_hosts": []})
    assert result.returncode == 0, result.stdout[-3000:]
    assert sorted(planned["plan"]["fleet"]) == ["lab"] and "gateway" not in planned["plan"]


def test_an_option_of_the_wrong_type_is_refused_by_name(tmp_path):
    result, planned = run_action(tmp_path, {"controller_root": ROOT, "hosts": "lab"})
    assert result.returncode != 0 and planned is None
    assert "hosts must be a list" in result.stdout


def test_an_input_the_plan_cannot_start_from_fails_the_task_with_the_variable(tmp_path):
    result, planned = run_action(tmp_path, {"controller_root": ROOT, "write": False},
                                 "-e", "llamafleet_backend=quantum")
    assert result.returncode != 0 and planned is None
    assert "llamafleet_backend" in result.stdout and "quantum" in result.stdout, result.stdout[-3000:]
