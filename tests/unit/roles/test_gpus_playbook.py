"""playbooks/gpus.yml on a cuda host, with a stand-in nvidia-smi printing the recorded-format fixtures."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "unit", "plugins", "modules", "fixtures")


def run(tmp_path, fixture: str, names: list[str]) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\ncat {os.path.join(FIXTURES, fixture)}\n")
    fake.chmod(0o755)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"llamafleet": {"hosts": {"box": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "llamafleet_backend": "cuda", "llamafleet_gpus": [{"index": i, "name": n} for i, n in enumerate(names)]}}}}))
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           "playbooks/gpus.yml"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))


def test_the_example_hosts_eight_p106_pass(tmp_path):
    result = run(tmp_path, "nvidia-smi-p106-100-x8.csv", ["P106-100"] * 8)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "7 NVIDIA P106-100 6078 MiB" in " ".join(result.stdout.split())


@pytest.mark.parametrize("fixture,names,words", [
    ("nvidia-smi-gpu-requires-reset.csv", ["P106-100"] * 3, "nvidia-smi reports memory.total [GPU requires reset]"),
    ("nvidia-smi-h100.csv", ["P106-100"], "declared 'P106-100', the host has 'NVIDIA H100 80GB HBM3'"),
    ("nvidia-smi-no-devices.txt", ["P106-100"], "nvidia-smi: no-devices"),
])
def test_other_or_faulty_hardware_stops_the_play(tmp_path, fixture, names, words):
    result = run(tmp_path, fixture, names)
    assert result.returncode != 0 and words in " ".join(result.stdout.split())
