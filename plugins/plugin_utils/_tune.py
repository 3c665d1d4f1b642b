# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tune core: one llama-server argument swept over values, each benched, side by side with the plan.

Pure Python. playbooks/tune.yml plans every value first (the plan filter with `server_args`, which
applies with_server_args below to each host's variables), refuses the sweep when any value does not
fit, then applies, benches and compares them; the table and the best value are computed here.
"""
from __future__ import annotations

import copy
import math
import re

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench import simulated_note

# objective -> (bench figure of the group, lower is better)
OBJECTIVES = {
    "ttft_p95": ("TTFT p95 (s)", True),
    "ttft_p50": ("TTFT p50 (s)", True),
    "tokens_per_s": ("tokens/s per request", False),
}
KNOB_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class TuneError(ValueError):
    """A tune setting that cannot work; the message names the variable and the fix."""


def check(knob, values, role, objective) -> None:
    """Validate the sweep's variables before anything is planned or applied."""
    if not isinstance(knob, str) or not KNOB_RE.match(knob):
        raise TuneError(f"llamafleet_tune_knob must be one llama-server argument as the layout's args name it "
                        f"(e.g. parallel, ubatch_size), got {knob!r}")
    if not isinstance(values, list) or len(values) < 2:
        raise TuneError(f"llamafleet_tune_values must be a list of at least two values of {knob}, got {values!r}")
    if len({repr(v) for v in values}) != len(values):
        raise TuneError(f"llamafleet_tune_values has a value twice: {values!r}")
    if not isinstance(role, str) or not role:
        raise TuneError(f"llamafleet_tune_role must name the servers' role the knob applies to (e.g. chat), got {role!r}")
    if objective not in OBJECTIVES:
        raise TuneError(f"llamafleet_tune_objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def with_server_args(hv: dict, role: str, args: dict) -> dict:
    """A host's llamafleet_* variables with `args` set on every server of `role` (layout entries and
    explicit llamafleet_servers entries alike); the input is not changed."""
    out = dict(hv)
    layout = hv.get("llamafleet_server_layout")
    if isinstance(layout, dict) and isinstance(layout.get("per_gpu"), list):
        layout = copy.deepcopy(layout)
        for entry in layout["per_gpu"]:
            if isinstance(entry, dict) and entry.get("role") == role:
                entry["args"] = dict(entry.get("args") or {}, **args)
        out["llamafleet_server_layout"] = layout
    servers = hv.get("llamafleet_servers")
    if isinstance(servers, list):
        servers = copy.deepcopy(servers)
        for server in servers:
            if not isinstance(server, dict):
                continue
            # an entry without a role overrides a layout server by name, its args merged over the
            # layout's: where it sets the knob itself, the sweep's value must replace it there too
            own = server.get("args") if isinstance(server.get("args"), dict) else {}
            if server.get("role") == role or ("role" not in server and own.keys() & args.keys()):
                server["args"] = dict(own, **args)
        out["llamafleet_servers"] = servers
    return out


def plan_errors(plan_result: dict) -> list[str]:
    """The error findings of a plan, as messages."""
    return [f["message"] for f in plan_result.get("findings") or [] if f.get("level") == "error"]


def _figure(run: dict, group: str, figure: str) -> dict | None:
    for row in (run.get("comparison") or {}).get(group, []):
        if row["figure"] == figure:
            return row
    return None


def best(runs: list[dict], group: str, objective: str):
    """The value whose run is best by the objective among runs with no errors; None when none qualifies."""
    figure, lower = OBJECTIVES[objective]
    candidates = []
    for run in runs:
        row = _figure(run, group, figure)
        if run["errors"] == 0 and row and row["measured"] is not None and math.isfinite(row["measured"]):
            candidates.append((row["measured"] if lower else -row["measured"], run["value"]))
    return min(candidates, key=lambda c: c[0])[1] if candidates else None


def _f(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "unbounded"
    return f"{value:.{digits}f}"


def table(knob: str, runs: list[dict], group: str) -> list[list[str]]:
    """One row per value: errors, then plan / bench / ratio of each figure the plan predicts."""
    rows = []
    for run in runs:
        row = [f"{knob}={run['value']}", str(run["errors"]), _f(run.get("output_tps"), 1)]
        for figure in ("TTFT p50 (s)", "TTFT p95 (s)", "tokens/s per request", "utilisation"):
            r = _figure(run, group, figure) or {}
            row.append(f"{_f(r.get('predicted'))} / {_f(r.get('measured'))} / {_f(r.get('ratio'))}")
        rows.append(row)
    return rows


HEADERS = ["value", "errors", "output tok/s", "TTFT p50 s (plan / bench / ratio)", "TTFT p95 s (plan / bench / ratio)",
           "tokens/s per request (plan / bench / ratio)", "utilisation (plan / bench / ratio)"]


def load_sentence(cfg: dict) -> str:
    """The load every value was benched with, from the bench's settings (results.json's config)."""
    offered = (f"{cfg['arrivals']} arrivals at {cfg['rate_per_min']:g} chat requests/min" if cfg.get("mode") == "rate"
               else f"{cfg.get('concurrency')} concurrent chat requests")
    span = f"for {cfg['duration_s']:g} s" if cfg.get("duration_s") else f"{cfg.get('requests')} requests"
    return (f"Each value benched under the same load: {offered} {span}, prompts ~{cfg['prompt_tokens']} tokens, "
            f"replies {cfg['reply_tokens']} tokens, {cfg['embed_rate_per_min']:g} embedding requests/min.")


def render(knob: str, role: str, runs: list[dict], group: str, objective: str) -> str:
    """tune.md: the side-by-side table, the best value and the inventory change to make."""
    chosen = best(runs, group, objective)
    lines = [f"# llamafleet tune: {knob} of the {role} servers", "", load_sentence(runs[0]["config"]) if runs else "", "",
             f"Group {group}. Each cell: the plan's prediction / the bench's measurement / measured / predicted.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in table(knob, runs, group)]
    simulated = sorted({host for run in runs for host in run.get("simulated_hosts") or []})
    if simulated:
        # the simulated servers' speeds are the plan's own for each value: what the sweep can show is
        # the queueing, batching and prompt cache around them, so the choice is confirmed on the cards
        lines[2:2] = [simulated_note(simulated) + " Confirm the best value on the real host before changing "
                      "its inventory.", ""]
    figure, lower = OBJECTIVES[objective]
    lines += ["", f"Objective: {'lowest' if lower else 'highest'} {figure} with zero errors."]
    if chosen is None:
        lines.append("No value ran without errors: no change to recommend.")
    else:
        lines += [f"Best: {knob}={chosen}. The inventory change to make (llamafleet_server_layout, the {role} entry):",
                  "", "```yaml", "args:", f"  {knob}: {chosen}", "```"]
    lines += ["", "Each value's full report is in its own directory beside this file."]
    return "\n".join(lines) + "\n"
