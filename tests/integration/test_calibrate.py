"""calibrate.yml on the lab (CPU backend): it writes a calibration file that the next plan uses."""
from __future__ import annotations

import json

from tests.integration.conftest import playbook


def test_calibrate_writes_a_file_the_next_plan_uses(lab, tmp_path):
    result = playbook("playbooks/calibrate.yml", "-e", f"llamafleet_report_dir={tmp_path}")
    cal = json.loads((tmp_path / "calibration" / "lab.json").read_text())
    assert cal["host"] == "lab" and cal["backend"] == "cpu" and cal["llama_cpp"] == "0c1e570"
    # a llama-server's own anonymous memory beyond its KV cache: some MiB, far below a container
    assert 1 < cal["process_overhead_mib"] < 512, cal
    speed = cal["speed"]["lab-smollm2"]["cpu"]
    assert speed["prefill_tps"] > 0 and speed["decode_tps"] > 0, cal
    assert "lab.json" in result.stdout

    playbook("playbooks/plan.yml", "-e", f"llamafleet_report_dir={tmp_path}")
    plan = json.loads((tmp_path / "plan.json").read_text())
    chat = next(s for s in plan["servers"] if s["role"] == "chat")
    assert chat["speed"]["source"] == "calibrated"
    assert chat["speed"]["decode_tps"] == speed["decode_tps"]
    assert chat["host_memory_mib"]["overhead"] == cal["process_overhead_mib"]
    print(f"\ncalibration of the lab: {json.dumps(cal)}")


def test_stale_calibration_is_refused_by_the_plan(tmp_path):
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "lab.json").write_text(json.dumps(
        {"host": "lab", "backend": "cpu", "llama_cpp": "deadbee", "driver": None, "measured_at": "t", "gpus": {},
         "speed": {}, "process_overhead_mib": 40}))
    result = playbook("playbooks/plan.yml", "-e", f"llamafleet_report_dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "calibration-stale" in result.stdout and "deadbee" in result.stdout
