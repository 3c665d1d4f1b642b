"""nvidia-smi's CSV, parsed: every field, unavailable values, faulty cards, no GPU, no driver."""
from __future__ import annotations

import os

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.nvidia_smi import QUERY, NvidiaSmiError, parse_gpus, read

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "modules", "fixtures")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def test_the_query_asks_for_what_the_issue_lists():
    # index, name, UUID, PCI bus id, memory, compute capability, driver, PCIe link generation and width
    assert QUERY == ("index,name,uuid,pci.bus_id,memory.total,compute_cap,driver_version,"
                     "pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max")


def test_eight_p106_on_x1_risers():
    out = read(0, fixture("nvidia-smi-p106-100-x8.csv"), "")
    assert out["status"] == "ok" and out["driver_version"] == "580.95.05" and out["message"] == ""
    assert [g["index"] for g in out["gpus"]] == list(range(8))
    first = out["gpus"][0]
    assert first == {"index": 0, "name": "NVIDIA P106-100", "uuid": "GPU-5d2c0a71-3e0b-8f4d-a2c6-01b7e9f04c3d",
                     "pci_bus_id": "00000000:01:00.0", "memory_mib": 6078, "compute_capability": "6.1",
                     "driver_version": "580.95.05", "pcie_link_gen": 1, "pcie_link_gen_max": 3,
                     "pcie_link_width": 1, "pcie_link_width_max": 16, "errors": {}}
    assert len({g["uuid"] for g in out["gpus"]}) == 8


@pytest.mark.parametrize("name,card,memory,cc,driver,link", [
    ("nvidia-smi-gtx-1060.csv", "NVIDIA GeForce GTX 1060 6GB", 6144, "6.1", "580.95.05", (3, 16)),
    ("nvidia-smi-h100.csv", "NVIDIA H100 80GB HBM3", 81559, "9.0", "580.95.05", (5, 16)),
    # name, driver and compute capability as ../shared/cuda-truth/h200.json records the H200
    ("nvidia-smi-h200.csv", "NVIDIA H200", 143771, "9.0", "580.159.04", (5, 16)),
])
def test_single_cards(name, card, memory, cc, driver, link):
    out = read(0, fixture(name), "")
    (gpu,) = out["gpus"]
    assert (gpu["name"], gpu["memory_mib"], gpu["compute_capability"], gpu["driver_version"]) == (card, memory, cc, driver)
    assert (gpu["pcie_link_gen"], gpu["pcie_link_width"]) == link and out["status"] == "ok"


def test_a_card_that_needs_a_reset_is_faulty_and_named():
    out = read(0, fixture("nvidia-smi-gpu-requires-reset.csv"), "")
    ok, reset, err = out["gpus"]
    assert out["status"] == "faulty"
    assert ok["errors"] == {}
    assert reset["memory_mib"] is None and reset["compute_capability"] is None
    assert reset["errors"]["memory.total"] == "[GPU requires reset]"
    assert err["errors"] == {"memory.total": "ERR!"}  # [N/A] PCIe values are unavailable, not errors
    assert err["pcie_link_gen"] is None
    assert "GPU 1 (00000000:02:00.0): memory.total [GPU requires reset]" in out["message"]
    assert "GPU 2 (00000000:03:00.0): memory.total ERR!" in out["message"]


def test_no_devices_and_no_driver():
    assert read(6, fixture("nvidia-smi-no-devices.txt"), "")["status"] == "no-devices"
    assert read(0, fixture("nvidia-smi-no-devices.txt"), "")["status"] == "no-devices"  # whatever the exit code
    no_driver = read(9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                        "Make sure that the latest NVIDIA driver is installed and running.\n", "")
    assert no_driver["status"] == "driver-not-loaded" and no_driver["gpus"] == []
    assert read(2, "", "Invalid combination of input arguments")["status"] == "failed"


def test_a_line_of_another_query_is_refused_with_the_line():
    # the query of the old nvidia_gpu_facts module: 5 columns
    with pytest.raises(NvidiaSmiError, match="unexpected nvidia-smi line '0,P106-100,6063,6.1,580.95.05'"):
        parse_gpus("0, P106-100, 6063, 6.1, 580.95.05\n")
