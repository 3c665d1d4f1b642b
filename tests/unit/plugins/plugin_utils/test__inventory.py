"""Inventory validation and the per-GPU layout: every bad input named, nothing guessed."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import InventoryError, memory_mib, normalize_host

SHA = "a" * 64
BASE = {
    "llamafleet_backend": "cuda",
    "llamafleet_gpus": [{"index": 0, "name": "P106-100"}, {"index": 1, "name": "P106-100"}],
    "llamafleet_models": {"m": {"path": "/models/m.gguf", "sha256": SHA, "shape": "llama-3.1-8b",
                                "quantization": "Q4_K_M"}},
    "llamafleet_server_layout": {"per_gpu": [
        {"role": "chat", "model": "m", "port_base": 8100, "container_memory": "1536m", "args": {"ctx_size": 4096}},
        {"role": "embed", "model": "m", "port_base": 8200, "container_memory": "512m"}]},
}


def hv(**changes):
    out = copy.deepcopy(BASE)
    out.update(changes)
    return out


def test_layout_expands_one_pair_per_gpu():
    servers = normalize_host("h", hv())["servers"]
    assert [(s["name"], s["gpu"], s["port"]) for s in servers] == [
        ("chat-0", 0, 8100), ("chat-1", 1, 8101), ("embed-0", 0, 8200), ("embed-1", 1, 8201)]


def test_explicit_entries_override_the_layout_knob_by_knob():
    servers = normalize_host("h", hv(llamafleet_servers=[{"name": "chat-1", "args": {"parallel": 2}},
                                                         {"name": "extra", "role": "chat", "model": "m", "gpu": 1,
                                                          "port": 8300, "container_memory": "1g"}]))["servers"]
    chat1 = next(s for s in servers if s["name"] == "chat-1")
    assert chat1["args"] == {"ctx_size": 4096, "parallel": 2}
    assert [s["name"] for s in servers][-1] == "extra"


@pytest.mark.parametrize("changes,message", [
    ({"llamafleet_backend": "rocm"}, "llamafleet_backend must be one of cpu, cuda"),
    ({"llamafleet_gpus": [{"index": 0, "name": "Mystery GPU"}]}, "llamafleet_gpus[0].memory_mib is required"),
    ({"llamafleet_gpus": [{"index": "0", "name": "P106-100"}]}, "llamafleet_gpus[0].index must be an integer"),
    ({"llamafleet_models": {"m": {"path": "relative.gguf", "sha256": SHA}}}, "llamafleet_models.m.path must be an absolute path"),
    ({"llamafleet_models": {"m": {"path": "/m.gguf", "sha256": "abc"}}}, "llamafleet_models.m.sha256 must be 64"),
    ({"llamafleet_servers": [{"name": "chat-0", "role": "judge"}]}, "server chat-0.role must be one of chat, embed"),
    ({"llamafleet_servers": [{"name": "chat-0", "model": "ghost"}]}, "server chat-0.model 'ghost' is not in llamafleet_models"),
    ({"llamafleet_servers": [{"name": "embed-1", "port": 8100}]}, "server embed-1.port 8100 is already used by server chat-0"),
    ({"llamafleet_servers": [{"name": "chat-1", "gpu": 7}]}, "server chat-1.gpu 7 does not exist on h"),
    ({"llamafleet_servers": [{"name": "chat-1", "container_memory": "1.5GB"}]}, "container_memory must look like 1536m"),
    ({"llamafleet_servers": [{"name": "chat-1", "args": {"ctx_size": "8k"}}]}, "server chat-1: args.ctx_size must be an integer"),
    ({"llamafleet_servers": [{"name": "chat-1", "port": 80}]}, "port must be an integer in 1024..65535"),
    ({"llamafleet_servers": [{"name": "Chat One"}]}, "name must match"),
    ({"llamafleet_servers": [{"name": "chat-0", "memory": "1g"}]}, "server chat-0 has unknown keys ['memory']"),
    ({"llamafleet_server_layout": {"per_gpu": [{"role": "chat", "model": "m"}]}}, "port_base must be an integer"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": -1, "prompt_tokens": 1, "reply_tokens": 1}}},
     "llamafleet_workload.m.requests_per_minute must be a positive number"),
    ({"llamafleet_host_memory_mib": "16G"}, "llamafleet_host_memory_mib must be a positive integer"),
])
def test_bad_input_names_the_variable(changes, message):
    with pytest.raises(InventoryError) as err:
        normalize_host("h", hv(**changes))
    assert message in str(err.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(InventoryError) as err:
        normalize_host("h", hv(llamafleet_servers=[{"name": "chat-0", "role": "x"}, {"name": "chat-1", "gpu": 9}]))
    assert len(err.value.problems) == 2


@pytest.mark.parametrize("text,mib", [("1536m", 1536), ("2g", 2048), ("524288k", 512)])
def test_memory_sizes(text, mib):
    assert memory_mib(text) == mib
