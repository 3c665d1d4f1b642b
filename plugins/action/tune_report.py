# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of llamafleet.fleet.tune_report: writes a sweep's tune.md, tune.json and tune.png.

Thin: the table and the best value are plugin_utils/_tune, the plot _bench_plots.
"""
from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._tune import best, render


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("runs", "knob", "role", "group", "objective", "report_dir"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        runs = list(args.get("runs") or [])
        if not runs:
            raise AnsibleActionFail("llamafleet.fleet.tune_report: no runs (no value was benched)")
        knob, role, objective = args["knob"], args.get("role") or "chat", args.get("objective") or "ttft_p95"
        # the chat group compared: the one asked for, else the first one the bench compared
        group = args.get("group") or next(name for name in runs[0]["comparison"] if "measured alone" not in name)
        report_dir = args["report_dir"]
        os.makedirs(report_dir, exist_ok=True)
        text = render(knob, role, runs, group, objective)
        with open(os.path.join(report_dir, "tune.md"), "w", encoding="utf-8") as handle:
            handle.write(text)
        with open(os.path.join(report_dir, "tune.json"), "w", encoding="utf-8") as handle:
            json.dump({"knob": knob, "role": role, "group": group, "objective": objective, "runs": runs}, handle, indent=1)
        from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_plots import tune_plot

        tune_plot(runs, group, knob, os.path.join(report_dir, "tune.png"))
        result.update(changed=False, report_dir=report_dir, best=best(runs, group, objective), group=group,
                      msg=text.splitlines())
        return result
