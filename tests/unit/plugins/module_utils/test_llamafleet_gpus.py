"""GPU catalogue and the comparison of declared GPUs with what nvidia-smi reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import (
    GPUError,
    compare_gpus,
    describe_gpu,
    lookup,
    parse_nvidia_smi,
)
from tests.conftest import ROOT

# The format `nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version
# --format=csv,noheader,nounits` prints (a fixture: no NVIDIA GPU on the machines that run these tests).
SMI = "0, P106-100, 6063, 6.1, 580.95.05\n1, P106-100, 6063, 6.1, 580.95.05\n"
DECLARED = [describe_gpu({"index": i, "name": "P106-100"}, f"g[{i}]") for i in (0, 1)]


def test_catalogue_names_and_aliases():
    assert lookup("NVIDIA GeForce GTX 1080")["compute_capability"] == "6.1"
    assert lookup("Tesla T4")["int8_tops"] > lookup("Tesla P40")["int8_tops"]
    assert lookup("Voodoo 3") is None


def test_declared_gpu_needs_figures_when_not_catalogued():
    with pytest.raises(GPUError, match=r"g\.memory_mib is required"):
        describe_gpu({"index": 0, "name": "Prototype"}, "g")
    custom = describe_gpu({"index": 0, "name": "Prototype", "memory_mib": 1000, "bandwidth_gbs": 1, "fp32_tflops": 1,
                           "int8_tops": 0, "compute_capability": "8.0"}, "g")
    assert custom["memory_mib"] == 1000


def test_matching_hardware_has_no_problems():
    assert compare_gpus(DECLARED, parse_nvidia_smi(SMI)) == []


def test_differences_are_named():
    observed = parse_nvidia_smi("0, NVIDIA GeForce GTX 1070, 8192, 6.1, 580.95.05\n2, P106-100, 6063, 6.1, 580.95.05\n")
    problems = compare_gpus(DECLARED, observed)
    assert any("declared 'P106-100', the host has 'NVIDIA GeForce GTX 1070'" in p for p in problems)
    assert any("assumed 6063 MiB, the card has 8192 MiB" in p for p in problems)
    assert any("the host has no GPU 1" in p for p in problems)
    assert any("GPUs [2] that llamafleet_gpus does not declare" in p for p in problems)


def test_bad_nvidia_smi_output():
    with pytest.raises(GPUError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi("No devices were found")


def run_module(tmp_path, smi_output: str | None, declared: list) -> dict:
    args = {"declared": declared}
    if smi_output is not None:
        fake = tmp_path / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{smi_output}EOF\n")
        fake.chmod(0o755)
        args["nvidia_smi"] = str(fake)
    else:
        args["nvidia_smi"] = "no-such-nvidia-smi"
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m",
                             "llamafleet.fleet.nvidia_gpu_facts", "-a", json.dumps(args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json"))
    return json.loads(result.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_module_reports_the_gpus(tmp_path):
    out = run_module(tmp_path, SMI, [{"index": 0, "name": "P106-100"}, {"index": 1, "name": "P106-100"}])
    assert not out.get("failed"), out
    assert [g["name"] for g in out["gpus"]] == ["P106-100", "P106-100"] and out["driver_version"] == "580.95.05"


def test_module_refuses_other_hardware(tmp_path):
    out = run_module(tmp_path, SMI, [{"index": 0, "name": "RTX 3090"}])
    assert out["failed"] and "declared 'RTX 3090', the host has 'P106-100'" in out["msg"]


def test_module_without_a_driver(tmp_path):
    out = run_module(tmp_path, None, [])
    assert out["failed"] and "install the NVIDIA driver" in out["msg"]
