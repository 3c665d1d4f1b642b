# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readable renderings of a plan: the console table and plan.md."""
from __future__ import annotations

import re
import textwrap

LEVEL_MARK = {"error": "ERROR", "warning": "WARN ", "info": "info "}


def _table(headers: list[str], rows: list[list]) -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return out


def _md_table(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def device_rows(plan: dict) -> tuple[list[str], list[list]]:
    rows = []
    for d in plan["devices"]:
        rows.append([d["host"], d["device"], d["name"], f"{d['capacity_mib'] or '?'}", f"{d['planned_mib']:,.0f}",
                     "yes" if d["fits"] else "NO", ", ".join(d["servers"])])
    return ["host", "device", "name", "capacity MiB", "planned MiB", "fits", "servers"], rows


def server_rows(plan: dict) -> tuple[list[str], list[list]]:
    rows = []
    for s in plan["servers"]:
        m, sp = s["memory_mib"], s["speed"]
        rows.append([s["name"], s["role"], s["model"], s["device"], s["gpu_layers"], f"{m['model']:,.0f}",
                     f"{m['context']:,.0f}", f"{m['compute']:,.0f}", _overhead_cell(m["overhead"], s.get("overhead_detail")),
                     f"{m['total']:,.0f}",
                     (f"{sp['decode_tps']:.1f}" + (" calibrated" if sp.get("source") == "calibrated" else ""))
                     if s["role"] == "chat" else "-",
                     f"{sp['ttft_s']:.2f}" if s["role"] == "chat" else "-"])
    return ["server", "role", "model", "device", "layers", "model", "context", "compute", "overhead",
            "total MiB", "tok/s", "TTFT s"], rows


def _overhead_cell(mib: float, detail: dict | None) -> str:
    """The CUDA overhead with where it comes from: estimated or measured +/- MiB, calibrated, or set."""
    if not detail:
        return f"{mib:,.0f}"
    spread = f" +/- {detail['uncertainty_mib']:,.0f}" if detail.get("uncertainty_mib") else ""
    return f"{mib:,.0f}{spread} {detail['source']}"


def stack_rows(plan: dict) -> tuple[list[str], list[list]]:
    """What each CUDA host will be given: driver branch, CUDA toolkit and its source, architectures, kernel modules."""
    rows = [[h["host"], h["gpu_stack"]["driver_branch"], h["gpu_stack"]["cuda_version"], h["gpu_stack"]["cuda_source"],
             h["gpu_stack"]["cuda_architectures"], h["gpu_stack"]["kernel_modules"]]
            for h in plan.get("hosts", []) if h.get("gpu_stack")]
    return ["host", "driver branch", "CUDA", "toolkit from", "CMAKE_CUDA_ARCHITECTURES", "kernel modules"], rows


def verdict(plan: dict) -> str:
    """The answer to "does it fit, and does it work", in one line."""
    s = plan["summary"]
    if s["errors"]:
        return (f"ERROR: the plan has {s['errors']} error(s) and {s['warnings']} warning(s): fix the errors below "
                f"(each names the knob and the change); nothing is changed on any host until then.")
    fits = "every GPU and host has room" if s["fits"] else "a device is over capacity"
    return f"OK: {fits}; {s['warnings']} warning(s), {s['infos']} note(s)."


def console(plan: dict, width: int = 110) -> str:
    """The plan as operators read it in a terminal: the verdict and the findings first, then the tables."""
    lines = [verdict(plan), ""]
    found = grouped(plan["findings"], [s["name"] for s in plan["servers"]])
    if found:
        lines.append("Findings (identical findings of several servers shown once):")
    for f, others in found:
        also = f" [also: {', '.join(others)}]" if others else ""
        lines += textwrap.wrap(f"{LEVEL_MARK[f['level']]} [{f['code']}] {f['message']}{also}", width,
                               subsequent_indent="      ", break_on_hyphens=False)
    lines += ["", "Devices:"] + _table(*device_rows(plan))
    if stack_rows(plan)[1]:
        lines += ["", "GPU hosts (installed by nvidia_driver, built by llamacpp_build):"] + _table(*stack_rows(plan))
    lines += ["", "Servers (MiB on their device; speed for one request alone):"] + _table(*server_rows(plan))
    if plan.get("gateway"):
        lines += ["", f"Gateway pools (one queue per model group, behind :{plan['gateway']['port']}):"]
        lines += _table(*pool_rows(plan))
    if plan["workloads"]:
        lines += ["", "Workloads (Poisson arrivals, one slot pool per model; pool rows: every host of the group):"]
        lines += _table(["model/pool", "req/min", "slots", "busy s/req", "utilisation", "TTFT p50", "TTFT p95",
                         "p95 if routed at random"],
                        [[w["model"], w["requests_per_minute"], w["slots"], f"{w['service_s']:.1f}",
                          f"{w['utilisation']:.0%}", _s(w["ttft_p50_s"]), _s(w["ttft_p95_s"]), _random_p95(w)]
                         for w in plan["workloads"]])
    head, rows = conversation_rows(plan)
    if rows:
        lines += ["", "Conversations (prompt cache per pool; slot-aware / conversation-affine):"]
        lines += _table(head, rows)
    return "\n".join(lines)


def grouped(findings: list[dict], server_names: list[str] = ()) -> list[tuple[dict, list[str]]]:
    """Findings that differ only by server names (and GPU) folded into one, errors first."""
    names = re.compile("|".join(re.escape(n) for n in sorted(server_names, key=len, reverse=True)) or "(?!)")
    groups: dict[tuple, tuple[dict, list[str]]] = {}
    for f in findings:
        text = names.sub("<server>", f["message"])
        text = re.sub(r"cuda:\d+", "cuda:N", text)
        key = (f["level"], f["code"], f["host"], text)
        if key in groups:
            groups[key][1].append(f["server"] or f["host"])
        else:
            groups[key] = (f, [])
    order = ("error", "warning", "info")
    return sorted(groups.values(), key=lambda g: order.index(g[0]["level"]))


def pool_rows(plan: dict) -> tuple[list[str], list[list]]:
    rows = [[p["alias"], p["model"], p["role"], p["port"], p["slots"],
             ", ".join(f"{m['name']} ({m['slots']} slot{'s' if m['slots'] > 1 else ''})" for m in p["servers"])]
            for p in plan["gateway"]["pools"]]
    return ["pool (alias)", "model", "role", "port", "slots", "servers"], rows


def conversation_rows(plan: dict) -> tuple[list[str], list[list]]:
    """Pools whose workload declares conversations: cache reuse and TTFT, slot-aware vs affine (_speed.conversation_cache)."""
    rows = []
    for w in plan["workloads"]:
        c = w.get("conversations")
        if not c:
            continue
        need = "-" if c["cache_mib_needed"] is None else f"{c['cache_mib_needed']:.0f}"
        rows.append([w["model"], c["routing"], c["turns"], f"{c['hit_slot_aware']:.0%} / {c['hit_affine']:.0%}",
                     f"{c['computed_slot_aware']:.0f} / {c['computed_affine']:.0f}",
                     f"{_s(c['ttft_p50_slot_aware_s'])} / {_s(c['ttft_p50_affine_s'])}",
                     f"{_s(c['ttft_p95_slot_aware_s'])} / {_s(c['ttft_p95_affine_s'])}",
                     f"{c['kv_mib_per_conversation']:.1f}", need,
                     "-" if c["cache_ram_mib_min"] is None else f"{c['cache_ram_mib_min']:.0f}"])
    return ["pool", "routing", "turns", "history found (slot-aware / affine)", "prompt tokens prefilled",
            "TTFT p50", "TTFT p95", "MiB per conversation", "cache MiB needed", "cache_ram MiB"], rows


def _random_p95(w: dict) -> str:
    """Pool rows carry the same load routed at random, for comparison; per-host rows do not."""
    scattered = w.get("random_routing")
    return _s(scattered["ttft_p95_s"]) if scattered else "-"


def _s(value) -> str:
    return "unbounded" if value is None else f"{value:.2f} s"


def _fits_cell(alt: dict) -> str:
    """yes/no, and "maybe" where the spare MiB are fewer than the card's estimated overhead may be off by."""
    if not alt["fits"]:
        return "no"
    if alt.get("spare_mib", 0) < alt.get("uncertainty_mib", 0):
        return f"maybe ({alt['spare_mib']:,.0f} MiB spare, overhead +/- {alt['uncertainty_mib']:,.0f})"
    return "yes"


def markdown(plan: dict) -> str:
    lines = ["# llamafleet plan", "",
             "Predicted from GGUF metadata and the inventory, before deployment. Memory columns are "
             "llama.cpp's own (model, context = KV cache, compute = graph buffers) plus the per-process "
             "CUDA overhead (estimated, measured on the card elsewhere, calibrated on the host, or set in the inventory); "
             "speeds are roofline estimates unless marked calibrated (see docs/plan.md).", "", "## Devices", ""]
    lines += _md_table(*device_rows(plan))
    if stack_rows(plan)[1]:
        lines += ["", "## GPU hosts", ""] + _md_table(*stack_rows(plan))
    lines += ["", "## Servers", ""] + _md_table(*server_rows(plan))
    if plan.get("gateway"):
        lines += ["", "## Gateway pools", "",
                  f"One queue per model group behind the gateway (port {plan['gateway']['port']}): a request waits "
                  "for the first free slot on any server of its group.", ""]
        lines += _md_table(*pool_rows(plan))
    if plan["workloads"]:
        lines += ["", "## Workloads", "", "| model / pool | req/min | slots | utilisation | TTFT p50 | TTFT p95 | "
                  "TTFT p95 if routed at random |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {w['model']} | {w['requests_per_minute']} | {w['slots']} | {w['utilisation']:.0%} | "
                  f"{_s(w['ttft_p50_s'])} | {_s(w['ttft_p95_s'])} | {_random_p95(w)} |" for w in plan["workloads"]]
    head, rows = conversation_rows(plan)
    if rows:
        lines += ["", "### Conversations", "", "The declared conversation pattern's prompt-cache reuse per pool, "
                  "slot-aware routing / conversation-affine routing (docs/gateway.md).", ""]
        lines += _md_table(head, rows)
    lines += ["", "## Findings", ""]
    for f, others in grouped(plan["findings"], [s["name"] for s in plan["servers"]]):
        where = f"{f['host']}/{f['server']}" if f["server"] else f["host"]
        also = f" (also {', '.join(others)})" if others else ""
        lines.append(f"- **{f['level']}** `{f['code']}` ({where}{also}): {f['message']}")
        if f.get("alternatives"):
            lines += ["", "  | change | GPU total MiB | fits | layers | tok/s alone | TTFT alone | "
                      "utilisation at declared load | TTFT p50 | TTFT p95 |", "  |---|---|---|---|---|---|---|---|---|"]
        for alt in f.get("alternatives", []):
            w = alt.get("workload") or {}
            lines.append(f"  | {alt['change']} | {alt['device_total_mib']:,.0f} | {_fits_cell(alt)} | "
                         f"{alt['gpu_layers']} | {alt['decode_tps']} | {alt['ttft_s']} s | "
                         f"{format(w['utilisation'], '.0%') if w else '-'} | {_s(w.get('ttft_p50_s')) if w else '-'} | "
                         f"{_s(w.get('ttft_p95_s')) if w else '-'} |")
        if f.get("alternatives"):
            lines.append("")
    return "\n".join(lines) + "\n"
