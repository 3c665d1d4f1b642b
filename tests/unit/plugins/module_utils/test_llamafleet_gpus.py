"""The GPU catalogue (nvidia-smi parsing: test_nvidia_smi.py; the comparison: plugin_utils/test__gpus.py)."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import GPUError, describe_gpu, lookup


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
