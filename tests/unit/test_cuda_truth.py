"""The planner against llama.cpp on a real NVIDIA H200 (tests/data/cuda-truth/h200.json).

Every recorded configuration goes through the planner with the card from the catalogue; its
columns must match llama.cpp's own breakdown at exit (after one real request per slot): model and
context within 1% or 1 MiB, compute within 10% or 4 MiB, on the device and on the host; the
device total (model + context + compute + CUDA overhead) within 3% of nvidia-smi's per-process
figure. The models were metadata-exact synthetic files of the catalogued shapes (README.md there),
so the planner describes them from the same shapes. The table is printed at the end of the run.
"""
from __future__ import annotations

import json
import os
import shlex

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gpus import describe_gpu
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from tests.conftest import CUDA_TRUTH_ROWS, ROOT

DATA = os.path.join(ROOT, "tests", "data", "cuda-truth", "h200.json")
with open(DATA, encoding="utf-8") as _handle:
    TRUTH = json.load(_handle)
FILES = {"llama31-8b-Q6_K.gguf": ("llama-3.1-8b", "Q6_K"), "llama31-8b-Q4_K_M.gguf": ("llama-3.1-8b", "Q4_K_M"),
         "nomic-embed-F16.gguf": ("nomic-embed-text-v1.5", "F16")}
FLAGS = {"-c": "ctx_size", "-np": "parallel", "-b": "batch_size", "-ub": "ubatch_size", "-ngl": "n_gpu_layers",
         "-fa": "flash_attn", "-ctk": "cache_type_k", "-ctv": "cache_type_v", "--cache-reuse": "cache_reuse"}
H200 = describe_gpu({"index": 0, "name": "NVIDIA H200"}, "h200")


def parse_args(command_line: str) -> dict:
    """llama-server flags as recorded -> the inventory's typed args."""
    words, args = shlex.split(command_line), {}
    while words:
        flag = words.pop(0)
        if flag == "--embedding":
            args["embeddings"] = True
            continue
        value = words.pop(0)
        args[FLAGS[flag]] = int(value) if value.lstrip("-").isdigit() else value
    return args


def within(predicted: float, measured: int, rel: float, abs_mib: float) -> bool:
    # the breakdown truncates to whole MiB: measured <= true value < measured + 1
    return any(abs(predicted - (measured + d)) <= max(abs_mib, rel * measured) for d in (0.0, 0.999))


def test_catalogue_has_the_card_as_measured():
    # nvidia-smi: 143,771 MiB; ggml_cuda_init: "VRAM: 143155 MiB"; 132 SMs, compute capability 9.0
    assert (H200["memory_mib"], H200["sms"], H200["compute_capability"], H200["bandwidth_gbs"]) == (
        TRUTH["configs"][0]["at_exit_after_work_mib"]["cuda0"]["total"], 132, "9.0", 4800.0)


@pytest.mark.parametrize("config", TRUTH["configs"], ids=[c["name"] for c in TRUTH["configs"]])
def test_plan_matches_llama_cpp_on_h200(config):
    info = model_info_from_shape(*FILES[config["model_file"]], config["model_file"])
    mem = server_memory(info, parse_args(config["llama_server_args"]), "cuda", "cuda:0", gpu=H200)
    dev, host = config["at_exit_after_work_mib"]["cuda0"], config["at_exit_after_work_mib"]["host"]
    smi = config["nvidia_smi_process_mib"]["after_work"]
    host_ctx_compute = host["context"] + host["compute"]
    row = (f"{config['name']:12s} model {mem.model:7.1f}/{dev['model']:<5d} context {mem.context:6.1f}/{dev['context']:<5d} "
           f"compute {mem.compute:5.1f}/{dev['compute']:<4d} overhead {mem.overhead:5.1f}/{dev['unaccounted']:<4d} "
           f"total {mem.total:7.1f}/{smi:<5d} ({(mem.total - smi) / smi:+.1%}) | host model {mem.host_model:6.1f}/"
           f"{host['model']:<5d} ctx+compute {mem.host_compute:5.1f}/{host_ctx_compute}")
    CUDA_TRUTH_ROWS.append(row)
    assert within(mem.model, dev["model"], 0.01, 1), row
    assert within(mem.context, dev["context"], 0.01, 1), row
    assert within(mem.compute, dev["compute"], 0.10, 4), row
    assert abs(mem.total - smi) <= 0.03 * smi, row
    assert within(mem.host_model, host["model"], 0.01, 1), row
    assert within(mem.host_compute, host_ctx_compute, 0.10, 4), row
