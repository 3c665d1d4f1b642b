"""The console table and plan.md, rendered from a plan written out by hand (not computed here).

The expected texts are written out in full: column alignment, number formats, the grouping of
identical findings (errors first) and the alternatives table are what a reader of plan.md sees.
"""
from __future__ import annotations

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._report import console, grouped, markdown, verdict


def _finding(level, code, server, message, **data):
    return dict({"level": level, "code": code, "host": "gpu1", "server": server, "message": message}, **data)


ALT_FITS = {"change": "model: q4 (Q4_K_M)", "device_total_mib": 5876.4, "fits": True, "gpu_layers": "32/32+output",
            "decode_tps": 24.5, "ttft_s": 1.75,
            "workload": {"utilisation": 0.456, "ttft_p50_s": 1.8, "ttft_p95_s": 3.25, "stable": True}}
# fits on the planned figures, but by less than the card's estimated CUDA overhead may be off by
ALT_MAYBE = {"change": "n_gpu_layers: 27", "device_total_mib": 6023.6, "fits": True, "spare_mib": 39.6,
             "uncertainty_mib": 180.0, "gpu_layers": "26/32+output", "decode_tps": 7.6, "ttft_s": 4.69}
ALT_NO = {"change": "ctx_size: 6144", "device_total_mib": 6410.0, "fits": False, "gpu_layers": "32/32+output",
          "decode_tps": 18.0, "ttft_s": 2.1}
PLAN = {
    "devices": [
        {"host": "gpu1", "device": "cuda:0", "name": "P106-100", "capacity_mib": 6063, "planned_mib": 6712.4,
         "fits": False, "servers": ["chat-0", "embed-0"]},
        {"host": "cpu1", "device": "cpu", "name": "host RAM", "capacity_mib": None, "planned_mib": 1234.5,
         "fits": True, "servers": []},
    ],
    "servers": [
        {"name": "chat-0", "role": "chat", "model": "q6", "device": "cuda:0", "gpu_layers": "32/32+output",
         "memory_mib": {"model": 5871.2, "context": 272.0, "compute": 37.4, "overhead": 250.0, "total": 6430.6},
         "overhead_detail": {"source": "estimated", "mib": 250.0, "uncertainty_mib": 90.0},
         "speed": {"decode_tps": 18.44, "ttft_s": 2.046, "source": "calibrated"}},
        {"name": "embed-0", "role": "embed", "model": "nomic", "device": "cuda:0", "gpu_layers": "12/12+output",
         "memory_mib": {"model": 260.9, "context": 0.0, "compute": 21.0, "overhead": 250.0, "total": 531.9},
         "overhead_detail": {"source": "set", "mib": 250.0, "uncertainty_mib": 0.0},
         "speed": {"decode_tps": 99.0, "ttft_s": 0.1, "source": "estimated"}},
    ],
    "workloads": [{"model": "q6", "requests_per_minute": 30, "slots": 2, "service_s": 30.5, "utilisation": 1.27,
                   "ttft_p50_s": None, "ttft_p95_s": None},
                  {"model": "q4", "requests_per_minute": 3, "slots": 1, "service_s": 21.04, "utilisation": 0.351,
                   "ttft_p50_s": 1.5, "ttft_p95_s": 12.345}],
    "findings": [
        _finding("info", "cuda-graphs-inactive", "chat-0", "chat-0: graphs off on cuda:0"),
        _finding("warning", "partial-offload", "chat-0", "chat-0: only 20/32 layers"),
        _finding("info", "cuda-graphs-inactive", "embed-0", "embed-0: graphs off on cuda:1"),
        _finding("error", "does-not-fit", "chat-0", "cuda:0 needs 6,712 MiB", alternatives=[ALT_FITS, ALT_MAYBE, ALT_NO]),
        _finding("warning", "host-memory-overcommitted", None, "gpu1: limits exceed RAM"),
    ],
    "summary": {"errors": 1, "warnings": 2, "infos": 2, "fits": False},
}

# every line ends in "$", so that the padding of the last column shows
CONSOLE = """\
ERROR: the plan has 1 error(s) and 2 warning(s): fix the errors below (each names the knob and the change); nothing is changed on any host until then.$
$
Findings (identical findings of several servers shown once):$
ERROR [does-not-fit] cuda:0 needs 6,712 MiB$
WARN  [partial-offload] chat-0: only 20/32 layers$
WARN  [host-memory-overcommitted] gpu1: limits exceed RAM$
info  [cuda-graphs-inactive] chat-0: graphs off on cuda:0 [also: embed-0]$
$
Devices:$
host  device  name      capacity MiB  planned MiB  fits  servers        $
----  ------  --------  ------------  -----------  ----  ---------------$
gpu1  cuda:0  P106-100          6063        6,712  NO    chat-0, embed-0$
cpu1  cpu     host RAM  ?                   1,234  yes                  $
$
Servers (MiB on their device; speed for one request alone):$
server   role   model  device  layers        model  context  compute  overhead              total MiB  tok/s            TTFT s$
-------  -----  -----  ------  ------------  -----  -------  -------  --------------------  ---------  ---------------  ------$
chat-0   chat   q6     cuda:0  32/32+output  5,871      272       37  250 +/- 90 estimated      6,431  18.4 calibrated    2.05$
embed-0  embed  nomic  cuda:0  12/12+output    261        0       21               250 set        532  -                -     $
$
Workloads (Poisson arrivals, one slot pool per model; pool rows: every host of the group):$
model/pool  req/min  slots  busy s/req  utilisation  TTFT p50   TTFT p95   p95 if routed at random$
----------  -------  -----  ----------  -----------  ---------  ---------  -----------------------$
q6               30      2        30.5         127%  unbounded  unbounded  -                      $
q4                3      1        21.0          35%     1.50 s    12.35 s  -                      $"""

MARKDOWN = """\
# llamafleet plan

Predicted from GGUF metadata and the inventory, before deployment. Memory columns are llama.cpp's own \
(model, context = KV cache, compute = graph buffers) plus the per-process CUDA overhead (estimated, measured on \
the card elsewhere, calibrated on the host, or set in the inventory); speeds are roofline estimates unless marked \
calibrated (see docs/plan.md).

## Devices

| host | device | name | capacity MiB | planned MiB | fits | servers |
|---|---|---|---|---|---|---|
| gpu1 | cuda:0 | P106-100 | 6063 | 6,712 | NO | chat-0, embed-0 |
| cpu1 | cpu | host RAM | ? | 1,234 | yes |  |

## Servers

| server | role | model | device | layers | model | context | compute | overhead | total MiB | tok/s | TTFT s |
|---|---|---|---|---|---|---|---|---|---|---|---|
| chat-0 | chat | q6 | cuda:0 | 32/32+output | 5,871 | 272 | 37 | 250 +/- 90 estimated | 6,431 | 18.4 calibrated | 2.05 |
| embed-0 | embed | nomic | cuda:0 | 12/12+output | 261 | 0 | 21 | 250 set | 532 | - | - |

## Workloads

| model / pool | req/min | slots | utilisation | TTFT p50 | TTFT p95 | TTFT p95 if routed at random |
|---|---|---|---|---|---|---|
| q6 | 30 | 2 | 127% | unbounded | unbounded | - |
| q4 | 3 | 1 | 35% | 1.50 s | 12.35 s | - |

## Findings

- **error** `does-not-fit` (gpu1/chat-0): cuda:0 needs 6,712 MiB

  | change | GPU total MiB | fits | layers | tok/s alone | TTFT alone | utilisation at declared load | TTFT p50 | TTFT p95 |
  |---|---|---|---|---|---|---|---|---|
  | model: q4 (Q4_K_M) | 5,876 | yes | 32/32+output | 24.5 | 1.75 s | 46% | 1.80 s | 3.25 s |
  | n_gpu_layers: 27 | 6,024 | maybe (40 MiB spare, overhead +/- 180) | 26/32+output | 7.6 | 4.69 s | - | - | - |
  | ctx_size: 6144 | 6,410 | no | 32/32+output | 18.0 | 2.1 s | - | - | - |

- **warning** `partial-offload` (gpu1/chat-0): chat-0: only 20/32 layers
- **warning** `host-memory-overcommitted` (gpu1): gpu1: limits exceed RAM
- **info** `cuda-graphs-inactive` (gpu1/chat-0 (also embed-0)): chat-0: graphs off on cuda:0
"""


def test_console_renders_tables_and_grouped_findings():
    assert "\n".join(line + "$" for line in console(PLAN).split("\n")) == CONSOLE


def test_markdown_renders_tables_alternatives_and_grouped_findings():
    assert markdown(PLAN) == MARKDOWN


def test_verdicts():
    assert verdict(PLAN) == ("ERROR: the plan has 1 error(s) and 2 warning(s): fix the errors below (each names the knob "
                             "and the change); nothing is changed on any host until then.")
    assert verdict(dict(PLAN, summary={"errors": 0, "warnings": 3, "infos": 1, "fits": False})) == (
        "OK: a device is over capacity; 3 warning(s), 1 note(s).")


def test_no_workloads_no_workload_section():
    plan = dict(PLAN, workloads=[], findings=[])
    assert "Workloads" not in console(plan) and "## Workloads" not in markdown(plan)
    assert markdown(plan).endswith("## Findings\n\n")


def test_grouping_keeps_findings_that_differ_in_more_than_names():
    findings = [_finding("warning", "x", "chat-1", "chat-1 needs 10 MiB"),
                _finding("warning", "x", "chat-10", "chat-10 needs 10 MiB"),  # longest name replaced first
                _finding("warning", "x", "chat-2", "chat-2 needs 20 MiB"),    # another number: its own line
                _finding("error", "x", "chat-3", "chat-3 needs 10 MiB"),      # another level: its own line
                _finding("warning", "y", "chat-4", "chat-4 needs 10 MiB"),    # another code: its own line
                dict(_finding("warning", "x", "chat-5", "chat-5 needs 10 MiB"), host="gpu2")]  # another host
    out = grouped(findings, ["chat-1", "chat-10", "chat-2", "chat-3", "chat-4", "chat-5"])
    assert [(f["server"], f["level"], others) for f, others in out] == [
        ("chat-3", "error", []), ("chat-1", "warning", ["chat-10"]), ("chat-2", "warning", []),
        ("chat-4", "warning", []), ("chat-5", "warning", [])]


def test_grouping_of_host_findings_names_the_host_and_works_without_servers():
    findings = [_finding("warning", "z", None, "RAM on cuda:0"), dict(_finding("warning", "z", None, "RAM on cuda:1"))]
    [(first, others)] = grouped(findings)
    assert first["message"] == "RAM on cuda:0" and others == ["gpu1"]


# -- the console layout for operators (verdict first, wrapped findings) ------------------------------
WRAP_PLAN = {
    "devices": [{"host": "h", "device": "cuda:0", "name": "P106-100", "capacity_mib": 6063, "planned_mib": 7327.0,
                 "fits": False, "servers": ["chat-0", "embed-0"]}],
    "servers": [],
    "workloads": [],
    "findings": [
        {"level": "warning", "code": "ubatch-exceeds-batch", "host": "h", "server": "chat-0", "message": "w " * 80},
        {"level": "error", "code": "does-not-fit", "host": "h", "server": None, "message": "cuda:0 needs 7,327 MiB"},
    ],
    "summary": {"errors": 1, "warnings": 1, "infos": 0, "fits": False},
}


def test_the_first_line_answers_whether_it_works():
    lines = console(WRAP_PLAN).splitlines()
    assert lines[0].startswith("ERROR: the plan has 1 error(s) and 1 warning(s)")
    ok = dict(WRAP_PLAN, findings=[], summary={"errors": 0, "warnings": 0, "infos": 2, "fits": True})
    assert console(ok).splitlines()[0] == "OK: every GPU and host has room; 0 warning(s), 2 note(s)."


def test_findings_come_before_the_tables_errors_first_and_wrapped():
    lines = console(WRAP_PLAN, width=60).splitlines()
    error = lines.index("ERROR [does-not-fit] cuda:0 needs 7,327 MiB")
    warning = next(i for i, line in enumerate(lines) if line.startswith("WARN  [ubatch-exceeds-batch]"))
    assert error < warning < lines.index("Devices:")
    # 160 characters of message at width 60: three or more lines, continuations indented, none quoted
    continuation = lines[warning + 1:warning + 3]
    assert all(line.startswith("      w") and len(line) <= 60 for line in continuation)
    assert not any(line.startswith(("'", '"', "- ")) for line in lines)


def test_several_others_are_listed_with_commas():
    plan = dict(PLAN, findings=[_finding("info", "c", n, f"{n}: x") for n in ("chat-0", "embed-0", "chat-1")],
                servers=PLAN["servers"] + [dict(PLAN["servers"][0], name="chat-1")])
    assert "- **info** `c` (gpu1/chat-0 (also embed-0, chat-1)): chat-0: x" in markdown(plan)
    assert "info  [c] chat-0: x [also: embed-0, chat-1]" in console(plan)


def _console_findings(message):
    plan = dict(PLAN, findings=[_finding("info", "c", None, message)])
    lines = console(plan).splitlines()
    start = lines.index("Findings (identical findings of several servers shown once):") + 1
    return lines[start:lines.index("Devices:") - 1]


def test_findings_wrap_at_110_columns_and_not_at_hyphens():
    # "info  [c] " is 10 columns: 10 + 50 + 1 + 50 = 111 > 110, so the second word moves to an indented line
    assert _console_findings("a" * 50 + " " + "b" * 50) == ["info  [c] " + "a" * 50, "      " + "b" * 50]
    assert _console_findings("a" * 50 + " " + "b" * 49) == ["info  [c] " + "a" * 50 + " " + "b" * 49]
    # a hyphenated name stays whole: 10 + 95 + " abc-" would just fit 110 columns, but is not split off
    assert _console_findings("a" * 95 + " abc-def-ghi-jkl") == ["info  [c] " + "a" * 95, "      abc-def-ghi-jkl"]
