"""The console plan: the verdict first, findings on their own wrapped lines, then the tables."""
from __future__ import annotations

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._report import console

PLAN = {
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
    lines = console(PLAN).splitlines()
    assert lines[0].startswith("ERROR: the plan has 1 error(s) and 1 warning(s)")
    ok = dict(PLAN, findings=[], summary={"errors": 0, "warnings": 0, "infos": 2, "fits": True})
    assert console(ok).splitlines()[0] == "OK: every GPU and host has room; 0 warning(s), 2 note(s)."


def test_findings_come_before_the_tables_errors_first_and_wrapped():
    lines = console(PLAN, width=60).splitlines()
    error = lines.index("ERROR [does-not-fit] cuda:0 needs 7,327 MiB")
    warning = next(i for i, line in enumerate(lines) if line.startswith("WARN  [ubatch-exceeds-batch]"))
    assert error < warning < lines.index("Devices:")
    # 160 characters of message at width 60: three or more lines, continuations indented, none quoted
    continuation = lines[warning + 1:warning + 3]
    assert all(line.startswith("      w") and len(line) <= 60 for line in continuation)
    assert not any(line.startswith(("'", '"', "- ")) for line in lines)
