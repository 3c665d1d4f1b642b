"""The GPU catalogue (nvidia-smi parsing: test_nvidia_smi.py; the comparison: plugin_utils/test__gpus.py)."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import (
    CATALOGUE,
    GPUError,
    cc_int,
    describe_gpu,
    lookup,
)


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


@pytest.mark.parametrize("name,key", [("P106-100", "P106-100"), ("  nvidia p106-100 ", "P106-100"),
                                      ("NVIDIA Tesla T4", "Tesla T4"), ("tesla p40", "Tesla P40"),
                                      ("NVIDIA GeForce RTX 3090", "RTX 3090"), ("rtx 3090", "RTX 3090"),
                                      ("NVIDIA L4", "L4"), ("NVIDIA A100-SXM4-40GB", "A100 40GB")])
def test_lookup_spellings(name, key):
    assert lookup(name) is CATALOGUE[key]


def test_p106_figures_from_facts():
    # facts.md #1: 6063 MiB as llama.cpp reports it, 192.2 GB/s, 4.375 TFLOPS FP32, dp4a 4 x FP32, CC 6.1;
    # GP106 (GTX 1060 6GB): 1,280 CUDA cores / 128 per Pascal SM = 10 SMs
    assert describe_gpu({"index": 2, "name": "P106-100"}, "g") == {
        "index": 2, "name": "P106-100", "memory_mib": 6063, "bandwidth_gbs": 192.2, "fp32_tflops": 4.375,
        "int8_tops": 17.5, "compute_capability": "6.1", "sms": 10}
    # a declared figure wins over the catalogue; a number as compute capability is read as text
    gpu = describe_gpu({"index": 0, "name": "P106-100", "memory_mib": 6000, "compute_capability": 6.1}, "g")
    assert gpu["memory_mib"] == 6000 and gpu["compute_capability"] == "6.1"


@pytest.mark.parametrize("gpu,message", [
    ("P106-100", "g must be a mapping with index and name, got 'P106-100'"),
    ({"index": -1, "name": "P106-100"}, "g.index must be an integer >= 0, got -1"),
    ({"index": True, "name": "P106-100"}, "g.index must be an integer >= 0, got True"),
    ({"index": 0, "name": ""}, "g.name must be the GPU's name (e.g. P106-100), got ''"),
    ({"index": 0}, "g.name must be the GPU's name (e.g. P106-100), got None"),
    ({"index": 0, "name": "P106-100", "compute_capability": "61"}, "g.compute_capability must look like '6.1', got '61'"),
    ({"index": 0, "name": "P106-100", "compute_capability": "6.x"}, "g.compute_capability must look like '6.1', got '6.x'"),
    ({"index": 0, "name": "P106-100", "memory_mib": 0}, "g.memory_mib must be a positive number, got 0"),
    ({"index": 0, "name": "P106-100", "bandwidth_gbs": -1}, "g.bandwidth_gbs must be a positive number, got -1"),
    ({"index": 0, "name": "P106-100", "int8_tops": True}, "g.int8_tops must be a positive number, got True"),
    ({"index": 0, "name": "P106-100", "fp32_tflops": "4"}, "g.fp32_tflops must be a positive number, got '4'"),
    ({"index": 0, "name": "Prototype"}, "g.memory_mib is required: 'Prototype' is not in the catalogue (A100 40GB, A100 80GB, "),
])
def test_bad_gpu_descriptions(gpu, message):
    with pytest.raises(GPUError) as err:
        describe_gpu(gpu, "g")
    assert str(err.value).startswith(message)


def test_zero_int8_is_allowed():
    # CC 6.0 (P100) has no dp4a: 0 TOPS is a valid figure
    assert describe_gpu({"index": 0, "name": "Tesla P100"}, "g")["int8_tops"] == 0


def test_one_mib_is_a_valid_memory_size():
    gpu = describe_gpu({"index": 0, "name": "Proto", "memory_mib": 1, "bandwidth_gbs": 0, "fp32_tflops": 0, "int8_tops": 0,
                        "compute_capability": "5.0"}, "g")
    assert gpu["memory_mib"] == 1


def test_cc_int():
    assert (cc_int("6.1"), cc_int("12.0"), cc_int(8.6)) == (61, 120, 86)
