"""Calibration files: built from measurements (nvidia-smi stand-in output), checked against the host."""
from __future__ import annotations

import json

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils import _calibration as cal
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import normalize_host
from tests.unit.plugins.plugin_utils.test__plan import MODELS, cuda_host, findings

# what `nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits` prints
STAND_IN_SMI = "4242, 5682\n4343, 560\n"
CHAT = {"name": "chat-0", "model": "q4", "gpu_name": "P106-100",
        "memory_mib": {"model": 4403.5, "context": 1088.0, "compute": 39.0},
        "overhead_detail": {"source": "estimated", "parts": {"context": 132.4, "cublas": 0.0, "pool": 0.0}},
        "host_memory_mib": {}}
EMBED = {"name": "embed-0", "model": "nomic", "gpu_name": "P106-100",
         "memory_mib": {"model": 216.2, "context": 0.0, "compute": 98.0},
         "overhead_detail": {"source": "estimated", "parts": {"context": 132.4, "cublas": 70.0, "pool": 24.0}},
         "host_memory_mib": {}}


def build_cuda():
    return cal.build("h", "cuda", "0c1e570", "580.95.05", [CHAT, EMBED],
                     {"chat-0": {"pid": 4242, "rss_kib": 1}, "embed-0": {"pid": 4343, "rss_kib": 1}}, STAND_IN_SMI,
                     {"chat-0": {"prompt_per_second": 301.2, "predicted_per_second": 23.1}}, "2026-11-27T14:00:00Z")


def test_cuda_overhead_from_a_stand_in_nvidia_smi():
    out = build_cuda()
    # chat-0: 5682 - 4403.5 - 1088 - 39 = 151.5 (no cuBLAS, no pool)
    # embed-0: 560 - 216.2 - 0 - 98 = 245.8, less cuBLAS 70 and pool 24 = 151.8
    gpu = out["gpus"]["P106-100"]
    assert gpu["readings"] == [151.5, 151.8]
    assert gpu["overhead_mib"] == 151.8  # the larger reading: on the safe side
    assert gpu["uncertainty_mib"] == 10.0  # half the spread (0.15), at least 10
    assert out["speed"] == {"q4": {"P106-100": {"prefill_tps": 301.2, "decode_tps": 23.1}}}
    assert out["driver"] == "580.95.05" and "process_overhead_mib" not in out


def test_cpu_process_overhead_is_the_idle_anonymous_rss():
    plan_server = {"name": "chat-0", "model": "m", "memory_mib": {"model": 80, "context": 24.0, "compute": 9}}
    out = cal.build("lab", "cpu", "0c1e570", None, [plan_server], {"chat-0": {"pid": 7, "rss_kib": 70 * 1024}}, "",
                    {}, "t")
    assert out["process_overhead_mib"] == 70.0  # 70 x 1024 KiB of RssAnon


def test_cpu_process_overhead_is_the_smallest_reading():
    """Each idle RssAnon is the process's own part plus the buffer pages it touched: the smallest bounds it best."""
    chat = {"name": "chat-0", "model": "m", "memory_mib": {"model": 80, "context": 24.0, "compute": 9}}
    embed = {"name": "embed-0", "model": "e", "memory_mib": {"model": 235, "context": 9.0, "compute": 516}}
    # the lab's embedding server after a full batch: 1,102 MiB resident, a chat server 62 MiB
    out = cal.build("lab", "cpu", "0c1e570", None, [embed, chat],
                    {"embed-0": {"pid": 8, "rss_kib": 1102 * 1024}, "chat-0": {"pid": 7, "rss_kib": 62 * 1024}},
                    "", {}, "t")
    assert out["process_overhead_mib"] == 62.0 and out["process_readings_mib"] == [1102.0, 62.0]


def test_a_server_missing_from_nvidia_smi_is_an_error():
    with pytest.raises(ValueError, match="nvidia-smi lists no process 4343"):
        cal.build("h", "cuda", "x", "d", [CHAT, EMBED], {"chat-0": {"pid": 4242, "rss_kib": 1},
                                                         "embed-0": {"pid": 4343, "rss_kib": 1}},
                  "4242, 5682\n", {}, "t")


def write(tmp_path, data):
    (tmp_path / "calibration").mkdir(exist_ok=True)
    (tmp_path / "calibration" / "h.json").write_text(json.dumps(data))
    return str(tmp_path / "calibration")


def spec():
    return normalize_host("h", cuda_host())


def test_matching_calibration_is_used_by_the_plan(tmp_path):
    data = dict(build_cuda(), gpus={"P106-100": {"overhead_mib": 151.0, "uncertainty_mib": 6.0}})
    loaded, problems = cal.load(write(tmp_path, data), "h", spec(), "0c1e570")
    assert problems == [] and loaded["gpus"]["P106-100"]["overhead_mib"] == 151.0
    s = dict(spec(), calibration=loaded, calibration_findings=problems)
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import plan
    result = plan([s], {"h": MODELS})
    chat = next(x for x in result["servers"] if x["name"] == "chat-0")
    assert chat["overhead_detail"]["source"] == "calibrated" and chat["memory_mib"]["overhead"] == 151.0
    assert chat["speed"]["decode_tps"] == 23.1 and chat["speed"]["source"] == "calibrated"
    assert any(f["code"] == "cuda-overhead-calibrated" for f in result["findings"])


def test_calibration_for_a_gpu_the_host_does_not_have(tmp_path):
    data = dict(build_cuda(), gpus={"GTX 1080": {"overhead_mib": 180.0, "uncertainty_mib": 6.0}})
    loaded, problems = cal.load(write(tmp_path, data), "h", spec(), "0c1e570")
    assert loaded["gpus"] == {}
    assert [p["code"] for p in problems] == ["calibration-gpu-absent"]
    assert "GTX 1080" in problems[0]["message"] and "calibrate.yml" in problems[0]["message"]


def test_stale_calibration_another_llama_cpp(tmp_path):
    loaded, problems = cal.load(write(tmp_path, build_cuda()), "h", spec(), "b1234ff")
    assert loaded is None and [p["code"] for p in problems] == ["calibration-stale"]
    assert "0c1e570" in problems[0]["message"] and "b1234ff" in problems[0]["message"]


def test_stale_calibration_another_driver():
    problems = cal.driver_findings(build_cuda(), "h", "590.10")
    assert [p["code"] for p in problems] == ["calibration-stale"] and "580.95.05" in problems[0]["message"]
    assert cal.driver_findings(build_cuda(), "h", "580.95.05") == []


def test_unreadable_or_foreign_files_are_errors(tmp_path):
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "h.json").write_text("{not json")
    _, problems = cal.load(str(tmp_path / "calibration"), "h", spec(), None)
    assert [p["code"] for p in problems] == ["calibration-invalid"]
    _, problems = cal.load(write(tmp_path, dict(build_cuda(), host="other")), "h", spec(), None)
    assert [p["code"] for p in problems] == ["calibration-invalid"]


def test_no_file_no_calibration_and_the_card_stays_estimated(tmp_path):
    assert cal.load(str(tmp_path), "h", spec(), None) == (None, [])
    assert any(f["code"] == "cuda-overhead-estimated" for f in findings(cuda_host()))


def test_a_real_hosts_calibration_sets_its_simulated_hosts_profile(tmp_path):
    # calibrate.yml refuses a simulated host; the real host's file (backend cuda) is copied to its name
    sim = normalize_host("h", dict(cuda_host(), llamafleet_backend="sim", llamacpp_build_source={"ref": "0c1e570"}))
    loaded, problems = cal.load(write(tmp_path, build_cuda()), "h", sim, "0c1e570")
    assert problems == []
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import plan
    fleet = plan([dict(sim, calibration=loaded, calibration_findings=[])], {"h": MODELS})["fleet"]["h"]
    profile = json.loads(fleet["servers"][0]["env"]["LLAMASIM_PROFILE"])
    # measured on the card: 23.1 tok/s decode alone is a 43.29 ms step; 301.2 tok/s prefill
    assert profile["decode_s"][0] == pytest.approx(1 / 23.1, abs=1e-6) and profile["prefill_tps"] == 301.2


def test_a_stale_calibration_of_a_simulated_host_names_the_fix_that_works_there(tmp_path):
    sim = normalize_host("h", dict(cuda_host(), llamafleet_backend="sim", llamacpp_build_source={"ref": "0c1e570"}))
    _, problems = cal.load(write(tmp_path, dict(build_cuda(), llama_cpp="b1234ff")), "h", sim, "0c1e570")
    assert [p["code"] for p in problems] == ["calibration-stale"]
    assert "calibrate.yml" not in problems[0]["message"]
    assert "Copy a calibration measured on the real host (backend cuda) to h's name" in problems[0]["message"]
