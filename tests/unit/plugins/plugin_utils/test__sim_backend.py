"""llamafleet_backend: sim: planned as the declared cards, deployed as simulated servers (docs/sim.md)."""
from __future__ import annotations

import json

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import (
    InventoryError,
    deploy_input_problems,
    normalize_host,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import PlanError, describe_model, plan
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Speed, sim_profile
from tests.unit.plugins.plugin_utils.test__plan import MODELS, cuda_host

SOURCE = {"ref": "0c1e570"}


def sim_host(**changes):
    return dict(cuda_host(**changes), llamafleet_backend="sim", llamacpp_build_source=SOURCE)


def test_a_simulated_host_is_planned_as_its_declared_cards():
    (server_real, server_sim) = (plan([normalize_host("h", hv)], {"h": MODELS})["servers"][0]
                                 for hv in (cuda_host(), sim_host()))
    assert server_sim["device"] == "cuda:0" and server_sim["gpu_name"] == "P106-100"
    assert server_sim["memory_mib"] == server_real["memory_mib"]
    result = plan([normalize_host("h", sim_host())], {"h": MODELS})
    # no driver, no toolkit: a simulated host installs no GPU software
    assert result["hosts"][0]["gpu_stack"] is None


def test_a_simulated_host_is_refused_where_the_cards_would_not_fit():
    # Llama-3.1-8B Q6_K is 6,588 MB of weights alone: more than a P106-100's 6 GB
    result = plan([normalize_host("h", sim_host(chat={"model": "q6"}))], {"h": MODELS})
    assert "does-not-fit" in {f["code"] for f in result["findings"] if f["level"] == "error"}


def test_a_simulated_host_refuses_cards_the_real_host_could_not_serve():
    # a K80 is compute capability 3.7: no driver branch or llama.cpp CUDA build serves Kepler any more
    kepler = {"index": 0, "name": "Tesla K80", "memory_mib": 11441, "bandwidth_gbs": 240, "fp32_tflops": 4.1,
              "int8_tops": 0, "compute_capability": "3.7"}
    result = plan([normalize_host("h", sim_host(llamafleet_gpus=[kepler]))], {"h": MODELS})
    assert "gpu-generation-unsupported" in {f["code"] for f in result["findings"] if f["level"] == "error"}
    assert result["hosts"][0]["gpu_stack"] is None


def test_simulated_servers_get_the_plans_speed_as_their_profile_and_real_ones_nothing():
    fleet = plan([normalize_host("h", sim_host())], {"h": MODELS})["fleet"]["h"]
    chat = json.loads(fleet["servers"][0]["env"]["LLAMASIM_PROFILE"])
    # K and V at q8_0 (34 bytes per 32 values): 32 layers x 8 KV heads x 128 x 2 x 34/32 = 69,632 bytes a token
    assert chat["kv_bytes_per_token"] == 69632
    assert chat["n_embd"] == 4096
    assert len(chat["decode_s"]) == 2      # parallel: 2
    assert chat["decode_s"][0] < chat["decode_s"][1]
    real = plan([normalize_host("h", cuda_host())], {"h": MODELS})["fleet"]["h"]
    assert all("env" not in server for server in real["servers"])


def test_a_workload_edit_restarts_no_simulated_server():
    # the profile is the container's environment, hence part of its config digest: it is taken at the
    # reference request, so a different llamafleet_workload leaves every simulated container as it is
    def servers(workload):
        fleet = plan([normalize_host("h", sim_host(llamafleet_workload=workload))], {"h": MODELS})["fleet"]["h"]
        return [(s["name"], s["env"]) for s in fleet["servers"]]
    assert servers({"q4": {"requests_per_minute": 3, "prompt_tokens": 500, "reply_tokens": 256}}) == \
        servers({"q4": {"requests_per_minute": 20, "prompt_tokens": 3000, "reply_tokens": 40}})


def test_the_profile_steps_lie_on_the_line_between_one_slot_and_all():
    model = model_info_from_shape("llama-3.1-8b", "Q4_K_M", "q4")
    mem = server_memory(model, {"ctx_size": 4096, "parallel": 3}, "cuda", "cuda:0")
    # 25 tok/s alone -> 40 ms a step; 3 slots together at 60 tok/s -> 50 ms a step; 2 slots halfway
    profile = sim_profile(Speed(decode_tps=25.0, prefill_tps=300.0, ttft_s=1.7, batch_decode_tps=60.0, slots=3),
                          model, mem)
    assert profile["decode_s"] == pytest.approx([0.040, 0.045, 0.050])
    assert profile["prefill_tps"] == 300.0
    # Llama-3.1-8B Q4_K_M files are 4.92 GB: at the assumed 1 GB/s they load in about 4.9 s
    assert profile["load_s"] == pytest.approx(4.92, abs=0.05)


def test_the_simulated_hosts_models_are_stand_ins():
    fleet = plan([normalize_host("h", sim_host())], {"h": MODELS})["fleet"]["h"]
    assert fleet["models"]["q4"] == {"path": "/m/q4.gguf", "stand_in": True}
    assert fleet["backend"] == "sim"


def test_the_plan_never_reads_a_stand_in_as_a_model(tmp_path):
    stand_in = tmp_path / "m.gguf"
    stand_in.write_text("llamafleet: stand-in\n")
    spec = {"path": str(stand_in), "shape": "llama-3.1-8b", "quantization": "Q4_K_M"}
    assert describe_model("m", spec, str(tmp_path), stand_in=True).n_embd == 4096
    with pytest.raises(PlanError, match="not a GGUF file"):
        describe_model("m", spec, str(tmp_path))


@pytest.mark.parametrize("key,value", [
    ("nvidia_driver_branch", 580),
    ("nvidia_container_toolkit_repo_url", "http://mirror.invalid/"),
    ("llamacpp_build_cuda_version", "12.9.1"),
])
def test_settings_of_a_real_gpu_host_are_refused_naming_the_variable(key, value):
    with pytest.raises(InventoryError) as err:
        normalize_host("h", dict(sim_host(), **{key: value}))
    assert (f"{key} is set, but llamafleet_backend sim installs no NVIDIA software and builds no CUDA: "
            f"remove {key}") in str(err.value)


def test_a_ref_whose_flags_are_not_recorded_is_refused():
    with pytest.raises(InventoryError, match=r"llamacpp_build_source.ref 'b6700': llamafleet_backend sim simulates "
                                             r"the llama-server of a ref whose flags are recorded \(0c1e570\)"):
        normalize_host("h", dict(sim_host(), llamacpp_build_source={"ref": "b6700"}))


def test_a_simulated_host_needs_its_gpus_declared():
    with pytest.raises(InventoryError, match="llamafleet_backend is sim but llamafleet_gpus is empty"):
        normalize_host("h", dict(sim_host(), llamafleet_gpus=[]))


def test_a_simulated_host_needs_no_source_to_build_only_its_ref():
    hv = dict(sim_host(), llama_server_api_key="k" * 24)
    assert deploy_input_problems(hv) == []
    assert [code for code, _ in deploy_input_problems(dict(hv, llamafleet_backend="cuda"))] == ["build-source-invalid"]
