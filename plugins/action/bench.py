# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of llamafleet.fleet.bench: runs the load from the controller (documented in plugins/modules/bench.py).

Thin: settings, prompts, statistics and the report are plugin_utils/_bench_*; this runs the client,
shows a progress line every few seconds and writes results.json, report.md and the plots.
"""
from __future__ import annotations

import datetime
import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench import assemble, render_markdown
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_settings import BenchError, config, groups

display = Display()
PROGRESS_EVERY_S = 5.0


def _bar(state: dict, width: int = 30) -> str:
    share = min(state["elapsed_s"] / state["span_s"], 1.0) if state.get("span_s") else 0.0
    filled = int(share * width)
    return (f"bench [{'#' * filled}{'.' * (width - filled)}] {state['elapsed_s']:5.0f}/{state['span_s'] or 0:.0f} s  "
            f"{state['done']} done, {state['in_flight']} in flight, {state['errors']} errors")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("settings", "servers", "server_key", "gateway_url", "gateway_key", "gateway_models",
                             "models", "report_dir", "plan"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        if self._play_context.check_mode:
            result.update(skipped=True, msg="check mode: a bench sends real requests, nothing was sent")
            return result
        # imported here: the client needs aiohttp, which only the controller running a bench must have
        from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_client import Target, run
        from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_plots import write_plots

        servers = list(args.get("servers") or [])
        if not servers:
            raise AnsibleActionFail("llamafleet.fleet.bench: no servers (the fleet model llamafleet_fleet has none); "
                                    "run the preflight playbooks/plan.yml first")
        gateway_url = args.get("gateway_url") or None
        try:
            cfg = config(dict(args.get("settings") or {}))
            group_list = groups(servers, args.get("gateway_models") if gateway_url else None, args.get("models") or None)
        except BenchError as exc:
            raise AnsibleActionFail(f"{exc} (nothing was sent)") from None
        report_dir = args.get("report_dir")
        if not report_dir:
            raise AnsibleActionFail("llamafleet.fleet.bench: report_dir is required")
        os.makedirs(report_dir, exist_ok=True)

        last = [0.0]

        def progress(state: dict) -> None:
            if state["elapsed_s"] - last[0] >= PROGRESS_EVERY_S:
                last[0] = state["elapsed_s"]
                display.display(_bar(state))

        target = Target(gateway_url, args.get("gateway_key"), args.get("server_key"), servers, group_list)
        started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        outcome = run(cfg, target, progress)
        report = assemble(cfg, gateway_url or "the servers directly", "gateway" if gateway_url else "per-server",
                          started, group_list, servers, outcome, args.get("plan"))
        report["plots"] = write_plots(report, report_dir)
        with open(os.path.join(report_dir, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        with open(os.path.join(report_dir, "report.md"), "w", encoding="utf-8") as handle:
            handle.write(render_markdown(report))
        everything = report["summary"]["all"]
        result.update(
            changed=False, report_dir=report_dir, summary=report["summary"], server_side=report["server_side"],
            comparison=report["comparison"], errors=everything["errors"], config=report["config"],
            simulated_hosts=report["simulated_hosts"],
            msg=(("On simulated servers (llamafleet_backend: sim): " if report["simulated_hosts"] else "")
                 + f"{everything['completed']} of {everything['requests']} measured requests answered "
                 f"({everything['errors']} errors) in {everything['window_s']:.0f} s; TTFT p50 "
                 f"{everything['ttft']['p50'] or 0:.2f} s, p95 {everything['ttft']['p95'] or 0:.2f} s; "
                 f"{everything['output_throughput']:.1f} output tok/s; report: {report_dir}/report.md"
                 + "".join(f"\nWARNING: {w}" for w in report["warnings"])))
        return result
