# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of llamafleet.fleet.plan: the one way a playbook plans (documented in plugins/modules/plan.py).

Owns the plan's file I/O (the GGUF header cache, the calibration files, plan.json and plan.md) and its
defaults, so that plan.yml, tune.yml and the rolling restart cannot plan differently. The planning
itself is plugins/plugin_utils/_inventory_plan.py.
"""
from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory_plan import InventoryPlanError, plan_inventory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._report import markdown

REPORT_DIR_ENV = "LLAMAFLEET_REPORT_DIR"
OPTIONS = ("hosts", "gateway_hosts", "report_dir", "write", "cache_dir", "controller_root", "calibration_dir",
           "server_args", "rolling")


def report_dir_of(task_vars: dict, root: str) -> str:
    """Where the plan's reports go: llamafleet_report_dir (group_vars/all, or -e), else $LLAMAFLEET_REPORT_DIR,
    else reports/plan of the controller's project."""
    return task_vars.get("llamafleet_report_dir") or os.environ.get(REPORT_DIR_ENV) or os.path.join(root, "reports", "plan")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(OPTIONS)
    _supports_check_mode = True   # it contacts no host; its reports are the controller's record, written in check mode too

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        for name, kind in (("hosts", list), ("gateway_hosts", list), ("server_args", dict), ("rolling", dict)):
            if args.get(name) is not None and not isinstance(args[name], kind):
                raise AnsibleActionFail(f"llamafleet.fleet.plan: {name} must be a {kind.__name__}, got {args[name]!r}")
        groups = task_vars.get("groups") or {}
        root = os.path.normpath(args.get("controller_root") or os.path.join(task_vars.get("playbook_dir", "."), ".."))
        report_dir = args.get("report_dir") or report_dir_of(task_vars, root)
        hosts = args["hosts"] if args.get("hosts") is not None else groups.get("llamafleet", [])
        gateway_hosts = args["gateway_hosts"] if args.get("gateway_hosts") is not None else groups.get("gateway", [])
        cache_dir = args.get("cache_dir") or os.path.join(root, ".cache", "gguf-headers")
        calibration_dir = args.get("calibration_dir") or os.path.join(report_dir, "calibration")
        try:
            planned = plan_inventory(task_vars["hostvars"], list(hosts), cache_dir, root, list(gateway_hosts), calibration_dir,
                                     server_args=args.get("server_args") or None, rolling=args.get("rolling") or None)
        except InventoryPlanError as exc:
            raise AnsibleActionFail(str(exc)) from None
        if args.get("write", True):
            os.makedirs(report_dir, exist_ok=True)
            with open(os.path.join(report_dir, "plan.json"), "w", encoding="utf-8") as handle:
                handle.write(json.dumps(planned, indent=2, sort_keys=True) + "\n")
            with open(os.path.join(report_dir, "plan.md"), "w", encoding="utf-8") as handle:
                handle.write(markdown(planned))
        result.update(changed=False, plan=planned, report_dir=report_dir,
                      # not `warnings`: Ansible reads a result's warnings as a list of messages to print
                      error_count=planned["summary"]["errors"], warning_count=planned["summary"]["warnings"])
        return result
