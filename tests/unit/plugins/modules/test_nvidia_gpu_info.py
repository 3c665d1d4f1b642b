"""The nvidia_gpu_info module run by Ansible on this machine, against a stand-in nvidia-smi."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ARGS = ("--query-gpu=index,name,uuid,pci.bus_id,memory.total,compute_cap,driver_version,pcie.link.gen.current,"
        "pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max --format=csv,noheader,nounits")


def run_module(tmp_path, fixture: str | None, rc: int = 0, check: bool = False) -> dict:
    """Run the module with a stand-in nvidia-smi that prints a fixture, and only for the expected query."""
    args = {}
    if fixture is None:
        args["nvidia_smi"] = "no-such-nvidia-smi"
    else:
        fake = tmp_path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n[ \"$*\" = \"{ARGS}\" ] || {{ echo \"unexpected arguments: $*\" >&2; exit 2; }}\n"
                        f"cat {os.path.join(FIXTURES, fixture)}\nexit {rc}\n")
        fake.chmod(0o755)
        args["nvidia_smi"] = str(fake)
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m",
                             "llamafleet.fleet.nvidia_gpu_info", "-a", json.dumps(args)] + (["--check"] if check else []),
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json"))
    return json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_eight_p106(tmp_path):
    out = run_module(tmp_path, "nvidia-smi-p106-100-x8.csv", check=True)
    assert not out.get("failed") and not out["changed"], out
    assert out["status"] == "ok" and len(out["gpus"]) == 8 and out["driver_version"] == "580.95.05"
    assert out["gpus"][7]["pci_bus_id"] == "00000000:08:00.0" and out["gpus"][7]["pcie_link_width"] == 1


def test_h200(tmp_path):
    out = run_module(tmp_path, "nvidia-smi-h200.csv")
    assert out["gpus"][0]["name"] == "NVIDIA H200" and out["gpus"][0]["compute_capability"] == "9.0"


def test_faulty_card_is_reported_not_failed(tmp_path):
    out = run_module(tmp_path, "nvidia-smi-gpu-requires-reset.csv")
    assert not out.get("failed") and out["status"] == "faulty"
    assert out["gpus"][1]["errors"]["compute_cap"] == "[GPU requires reset]"


@pytest.mark.parametrize("fixture,rc,status", [(None, 0, "no-nvidia-smi"), ("nvidia-smi-no-devices.txt", 6, "no-devices")])
def test_no_gpu(tmp_path, fixture, rc, status):
    out = run_module(tmp_path, fixture, rc)
    assert not out.get("failed") and out["status"] == status and out["gpus"] == []
