"""Inventory validation and the per-GPU layout: every bad input named, nothing guessed."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import (
    InventoryError,
    api_key_problem,
    build_source_problems,
    deploy_input_problems,
    memory_mib,
    normalize_host,
)

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
    assert str(err.value) == ("inventory of h is not valid:\n  - server chat-0.role must be one of chat, embed, got 'x'\n"
                              "  - server chat-1.gpu 9 does not exist on h: llamafleet_gpus has indexes [0, 1]")


@pytest.mark.parametrize("text,mib", [("1536m", 1536), ("2g", 2048), ("524288k", 512)])
def test_memory_sizes(text, mib):
    assert memory_mib(text) == mib


def test_normalized_host_in_full():
    out = normalize_host("h", {
        "llamafleet_backend": "cuda", "llamafleet_gpus": [{"index": 0, "name": "P106-100"}],
        "llamafleet_models": {"m": {"path": "/models/m.gguf", "sha256": SHA}},
        "llamafleet_servers": [{"name": "c", "role": "chat", "model": "m", "gpu": 0, "port": 8100,
                                "container_memory": "2g", "args": {"ctx_size": "4096"}, "ulimits": ["memlock:-1:-1"]}],
        "llamafleet_host_memory_mib": 16000, "llamafleet_host_cpu_cores": 2, "llamafleet_host_cpu": {"gflops": 20},
        "llamafleet_workload": {"m": {"requests_per_minute": 3, "prompt_tokens": 500, "reply_tokens": 256}},
        "llamafleet_cuda_overhead_mib": 300, "llamacpp_build_cuda_architectures": "61-real",
        "llamacpp_build_cuda_version": "12.9.1"})
    assert out == {
        "host": "h", "backend": "cuda", "planned_as": "cuda", "bind_address": "127.0.0.1", "container_prefix": "llamafleet-",
        # completed from the catalogue: P106-100 per facts.md #1; 10 SMs (1,280 CUDA cores / 128 per Pascal SM)
        "gpus": [{"index": 0, "name": "P106-100", "memory_mib": 6063, "bandwidth_gbs": 192.2, "fp32_tflops": 4.375,
                  "int8_tops": 17.5, "compute_capability": "6.1", "sms": 10}],
        "models": {"m": {"path": "/models/m.gguf", "sha256": SHA}},
        "servers": [{"name": "c", "role": "chat", "model": "m", "gpu": 0, "port": 8100, "container_memory": "2g",
                     "container_memory_mib": 2048, "args": {"ctx_size": 4096}, "ulimits": ["memlock:-1:-1"]}],
        "host_memory_mib": 16000, "host_cpu_cores": 2, "host_reserved_mib": 1024, "host_cpu": {"gflops": 20},
        "workload": {"m": {"requests_per_minute": 3, "prompt_tokens": 500, "reply_tokens": 256}},
        "cuda_overhead_mib": 300, "cuda_architectures": "61-real", "cuda_version": "12.9.1", "cuda_source": None,
        "debian_suite": None, "driver_branch": None,
    }


def test_cpu_host_defaults():
    out = normalize_host("h", {"llamafleet_models": {"m": {"path": "/m.gguf", "sha256": SHA}},
                               "llamafleet_servers": [{"name": "c", "role": "chat", "model": "m", "gpu": 3, "port": 8100,
                                                       "container_memory": "1g"}]})
    assert (out["backend"], out["gpus"], out["host_cpu"], out["workload"]) == ("cpu", [], {}, {})
    assert (out["host_memory_mib"], out["host_reserved_mib"], out["cuda_overhead_mib"]) == (None, 1024, None)
    # the CPU backend has no GPU: the server's gpu is dropped, args and ulimits default to empty
    assert out["servers"][0]["gpu"] is None and out["servers"][0]["args"] == {} and out["servers"][0]["ulimits"] == []


def test_embed_servers_always_get_embeddings_and_site_names_are_kept():
    out = normalize_host("h", {"llamafleet_models": {"m": {"path": "/m.gguf", "sha256": SHA}},
                               "llamafleet_bind_address": "0.0.0.0", "llamafleet_container_prefix": "lf_",
                               "llamafleet_servers": [{"name": "e", "role": "embed", "model": "m", "port": 8200,
                                                       "container_memory": "1g"}]})
    assert out["servers"][0]["args"] == {"embeddings": True}
    assert (out["bind_address"], out["container_prefix"]) == ("0.0.0.0", "lf_")


def test_inputs_are_not_modified_and_layout_copies_are_independent():
    source = hv(llamafleet_servers=[{"name": "chat-1", "args": {"parallel": 2}}])
    before = copy.deepcopy(source)
    servers = normalize_host("h", source)["servers"]
    assert source == before
    chat0, chat1 = servers[0], servers[1]
    chat0["args"]["ctx_size"] = 1
    assert chat1["args"]["ctx_size"] == 4096 and source == before


def test_layout_on_chosen_gpus_and_explicit_servers_added():
    layout = {"gpus": [1], "per_gpu": [{"role": "chat", "model": "m", "port_base": 9000, "container_memory": "1g"}]}
    servers = normalize_host("h", hv(llamafleet_server_layout=layout))["servers"]
    assert [(s["name"], s["gpu"], s["port"]) for s in servers] == [("chat-1", 1, 9001)]


def _problems(**changes):
    with pytest.raises(InventoryError) as err:
        normalize_host("h", hv(**changes))
    assert str(err.value).startswith("inventory of h is not valid:\n  - ")
    return err.value.problems


@pytest.mark.parametrize("changes,problem", [
    ({"llamafleet_gpus": {"index": 0}}, "llamafleet_gpus must be a list of {index, name, ...}"),
    ({"llamafleet_gpus": [{"index": 0, "name": "P106-100"}, {"index": 0, "name": "P106-100"}]},
     "llamafleet_gpus has duplicate indexes [0, 0]"),
    ({"llamafleet_models": {}}, "llamafleet_models must be a non-empty mapping of model name -> {path, sha256, ...}"),
    ({"llamafleet_models": ["m"]}, "llamafleet_models must be a non-empty mapping of model name -> {path, sha256, ...}"),
    ({"llamafleet_models": {"m": "/m.gguf"}}, "llamafleet_models.m must be a mapping with path and sha256"),
    ({"llamafleet_models": {"m": {"path": "/m.bin", "sha256": SHA}}},
     "llamafleet_models.m.path must be an absolute path to a .gguf file on the host, got '/m.bin'"),
    ({"llamafleet_models": {"m": {"path": "/m.gguf", "sha256": SHA.upper()}}},
     f"llamafleet_models.m.sha256 must be 64 lower-case hex digits, got '{SHA.upper()}'"),
    ({"llamafleet_models": {"m": {"path": "/m.gguf", "sha256": SHA, "src": "a", "url": "b"}}},
     "llamafleet_models.m: give src (a file on the controller) or url, not both"),
    ({"llamafleet_models": {"m": {"path": "/m.gguf", "sha256": SHA, "size": 1}}},
     "llamafleet_models.m has unknown keys ['size']; valid: ['family', 'path', 'quantization', 'sha256', 'shape', 'src', "
     "'url']"),
    ({"llamafleet_server_layout": None, "llamafleet_servers": []},
     "no servers: set llamafleet_servers and/or llamafleet_server_layout"),
    ({"llamafleet_servers": {"name": "x"}}, "llamafleet_servers must be a list of servers"),
    ({"llamafleet_server_layout": {"per_gpu": "x"}}, "llamafleet_server_layout must be a mapping with a per_gpu list"),
    ({"llamafleet_server_layout": {"per_gpu": [], "gpus": [True]}},
     "llamafleet_server_layout.gpus must be a list of GPU indexes, got [True]"),
    ({"llamafleet_server_layout": {"per_gpu": [], "gpus": 0}},
     "llamafleet_server_layout.gpus must be a list of GPU indexes, got 0"),
    ({"llamafleet_server_layout": {"per_gpu": ["chat"]}}, "llamafleet_server_layout.per_gpu[0] must be a mapping"),
    ({"llamafleet_server_layout": {"per_gpu": [{"role": "chat", "port_base": 1, "gpu": 0}]}},
     "llamafleet_server_layout.per_gpu[0] has unknown keys ['gpu']; valid: ['args', 'container_memory', 'model', "
     "'port_base', 'role', 'ulimits']"),
    ({"llamafleet_server_layout": {"per_gpu": [{"role": "chat", "port_base": True}]}},
     "llamafleet_server_layout.per_gpu[0].port_base must be an integer (port = port_base + gpu index)"),
    ({"llamafleet_servers": ["chat-9"]}, "llamafleet_servers[4] must be a mapping"),
    # the same name twice outside the layout (inside it, a second entry overrides the first)
    ({"llamafleet_servers": [{"name": "x"}, {"name": "x"}]}, "server x: the name is used twice"),
    ({"llamafleet_servers": [{"name": "chat-1", "port": True}]}, "server chat-1.port must be an integer in 1024..65535, got True"),
    ({"llamafleet_servers": [{"name": "chat-1", "port": 65536}]}, "server chat-1.port must be an integer in 1024..65535, got 65536"),
    ({"llamafleet_servers": [{"name": "chat-1", "gpu": "1"}]},
     "server chat-1.gpu must be the index of one of llamafleet_gpus ([0, 1]), got '1'"),
    ({"llamafleet_servers": [{"name": "chat-1", "gpu": False}]},
     "server chat-1.gpu must be the index of one of llamafleet_gpus ([0, 1]), got False"),
    ({"llamafleet_servers": [{"name": "chat-1", "gpu": 7}]}, "server chat-1.gpu 7 does not exist on h: llamafleet_gpus has indexes [0, 1]"),
    ({"llamafleet_servers": [{"name": "embed-1", "args": {"embeddings": False}}]},
     "server embed-1: an embed server needs embeddings; remove args.embeddings: false"),
    ({"llamafleet_servers": [{"name": "chat-1", "ulimits": ["memlock=-1"]}]},
     "server chat-1.ulimits must be a list like ['memlock:-1:-1'], got ['memlock=-1']"),
    ({"llamafleet_servers": [{"name": "chat-1", "ulimits": "memlock:-1:-1"}]},
     "server chat-1.ulimits must be a list like ['memlock:-1:-1'], got 'memlock:-1:-1'"),
    ({"llamafleet_servers": [{"name": "chat-1", "model": "x"}], "llamafleet_models": {"m": {"path": "/m.gguf", "sha256": SHA},
                                                                                      "a": {"path": "/a.gguf", "sha256": SHA}}},
     "server chat-1.model 'x' is not in llamafleet_models (defined: a, m)"),
    ({"llamafleet_servers": [{"name": "c", "role": "chat", "model": "m", "port": 9999, "container_memory": "1g"}],
      "llamafleet_models": {"m": "bad"}},
     "llamafleet_models.m must be a mapping with path and sha256"),
    ({"llamafleet_host_cpu_cores": 0}, "llamafleet_host_cpu_cores must be a positive integer, got 0"),
    ({"llamafleet_bind_address": "localhost"},
     "llamafleet_bind_address must be an IP address the servers listen on, got 'localhost'"),
    ({"llamafleet_container_prefix": "Fleet-"},
     "llamafleet_container_prefix must match ^[a-z0-9][a-z0-9_.-]{0,31}$ (a Docker name prefix), got 'Fleet-'"),
    ({"llamafleet_host_memory_mib": True}, "llamafleet_host_memory_mib must be a positive integer, got True"),
    ({"llamafleet_workload": ["m"]}, "llamafleet_workload must map model name -> {requests_per_minute, prompt_tokens, "
                                     "reply_tokens}"),
    ({"llamafleet_workload": {"x": {"requests_per_minute": 1, "prompt_tokens": 1, "reply_tokens": 1}}},
     "llamafleet_workload.x: 'x' is not in llamafleet_models"),
    ({"llamafleet_workload": {"m": 5}}, "llamafleet_workload.m must be a mapping"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": 1, "prompt_tokens": True, "reply_tokens": 1}}},
     "llamafleet_workload.m.prompt_tokens must be a positive number, got True"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": 1, "prompt_tokens": 1}}},
     "llamafleet_workload.m.reply_tokens must be a positive number, got None"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": 1, "prompt_tokens": 300, "reply_tokens": 1,
                                    "turns_per_conversation": 0}}},
     "llamafleet_workload.m.turns_per_conversation must be a whole number >= 1, got 0"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": 1, "prompt_tokens": 300, "reply_tokens": 1,
                                    "turns_per_conversation": 4, "shared_prefix_tokens": 300}}},
     "llamafleet_workload.m.shared_prefix_tokens (300) must be below prompt_tokens (300): the shared prefix (system "
     "prompt, character card) is part of every prompt"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": 1, "prompt_tokens": 300, "reply_tokens": 1,
                                    "shared_prefix_tokens": 100}}},
     "llamafleet_workload.m: shared_prefix_tokens and active_conversations describe conversations; set "
     "turns_per_conversation too (1 for single requests)"),
    ({"llamafleet_workload": {"m": {"requests_per_minute": 1, "prompt_tokens": 300, "reply_tokens": 1, "turns": 4}}},
     "llamafleet_workload.m has unknown keys ['turns']; valid: ['active_conversations', 'prompt_tokens', 'reply_tokens', "
     "'requests_per_minute', 'shared_prefix_tokens', 'turns_per_conversation']"),
    ({"llamafleet_backend": "cuda", "llamafleet_gpus": []},
     "llamafleet_backend is cuda but llamafleet_gpus is empty: declare the GPUs (index, name; memory_mib etc. when the "
     "name is not in the catalogue)"),
])
def test_problem_texts(changes, problem):
    assert problem in _problems(**changes)


def test_each_bad_workload_key_and_model_is_reported():
    problems = _problems(llamafleet_workload={"x": 1, "m": {"requests_per_minute": 0, "prompt_tokens": 0, "reply_tokens": 0}})
    assert problems == ["llamafleet_workload.x: 'x' is not in llamafleet_models", "llamafleet_workload.x must be a mapping",
                        "llamafleet_workload.m.requests_per_minute must be a positive number, got 0",
                        "llamafleet_workload.m.prompt_tokens must be a positive number, got 0",
                        "llamafleet_workload.m.reply_tokens must be a positive number, got 0"]


def test_every_bad_layout_entry_is_reported():
    layout = {"per_gpu": [{"role": "chat"}, "x", {"role": "embed", "port_base": "8200"}]}
    assert _problems(llamafleet_server_layout=layout) == [
        "llamafleet_server_layout.per_gpu[0].port_base must be an integer (port = port_base + gpu index)",
        "llamafleet_server_layout.per_gpu[1] must be a mapping",
        "llamafleet_server_layout.per_gpu[2].port_base must be an integer (port = port_base + gpu index)",
        "no servers: set llamafleet_servers and/or llamafleet_server_layout"]


def test_a_bad_name_skips_the_other_checks_of_that_server():
    assert _problems(llamafleet_servers=[{"name": 5, "port": 1}]) == ["llamafleet_servers[4].name must match "
                                                                      "^[a-z0-9][a-z0-9-]{0,62}$, got 5"]


def test_memory_sizes_refused():
    for text in ("1.5g", "2G", "g", "12", None):
        with pytest.raises(ValueError):
            memory_mib(text)


def test_boundaries_accepted():
    out = normalize_host("h", hv(llamafleet_host_cpu_cores=1, llamafleet_servers=[
        {"name": "chat-0", "port": 1024}, {"name": "chat-1", "port": 65535}]))
    assert [s["port"] for s in out["servers"]][:2] == [1024, 65535] and out["host_cpu_cores"] == 1
    assert memory_mib("1536k") == 1  # whole MiB, rounded down


def test_layout_names_on_a_cpu_host_use_gpu_0():
    out = normalize_host("h", {"llamafleet_models": BASE["llamafleet_models"],
                               "llamafleet_server_layout": {"per_gpu": [{"role": "chat", "model": "m", "port_base": 8100,
                                                                         "container_memory": "1g"}]}})
    assert [(s["name"], s["port"]) for s in out["servers"]] == [("chat-0", 8100)]


def test_two_overrides_of_one_layout_server_merge_in_order():
    servers = normalize_host("h", hv(llamafleet_servers=[{"name": "chat-1", "args": {"parallel": 2}},
                                                         {"name": "chat-1", "args": {"ctx_size": 1024}}]))["servers"]
    assert next(s for s in servers if s["name"] == "chat-1")["args"] == {"ctx_size": 1024, "parallel": 2}


def test_every_bad_model_and_server_is_reported():
    problems = _problems(llamafleet_models={"a": "bad", "m": {"path": "rel.gguf", "sha256": SHA}},
                         llamafleet_servers=["x", {"name": "Bad Name"}, {"name": "chat-1", "gpu": 7},
                                             {"name": "embed-1", "args": {"ctx_size": "x"}}, {"name": "extra", "role": "judge"}])
    assert "llamafleet_models.a must be a mapping with path and sha256" in problems
    assert "llamafleet_models.m.path must be an absolute path to a .gguf file on the host, got 'rel.gguf'" in problems
    assert "llamafleet_servers[4] must be a mapping" in problems
    assert any(p.startswith("llamafleet_servers[5].name must match") for p in problems)
    assert "server chat-1.gpu 7 does not exist on h: llamafleet_gpus has indexes [0, 1]" in problems
    assert "server embed-1: args.ctx_size must be an integer >= 0, got 'x'" in problems
    assert "server extra.role must be one of chat, embed, got 'judge'" in problems  # listed after the bad name
    no_models = _problems(llamafleet_models={}, llamafleet_servers=[{"name": "chat-1", "model": "x"}])
    assert "server chat-1.model 'x' is not in llamafleet_models (defined: none)" in no_models


# -- the inputs later plays read: one rule each, applied by the plan before any host changes ----------
@pytest.mark.parametrize("key,words", [
    (None, "llama_server_api_key is not set"),
    ("", "llama_server_api_key is not set"),
    ("sk-short", "it has 8 characters"),
    ("sk-servers key-01234", "it contains a space"),    # 20 characters, one of them a space
    ("sk-servers-key-0123\u00e9", "it contains other characters"),
    (12345678901234567, "llama_server_api_key must be a string (quote it in YAML), got a int"),
])
def test_api_keys_outside_the_header_alphabet_are_refused(key, words):
    problem = api_key_problem("llama_server_api_key", key)
    assert problem and words in problem
    assert "sk-servers" not in problem       # the key itself is never shown


@pytest.mark.parametrize("key", ["a" * 16, "sk-llamafleet-lab-gateway-key", "Zm9vYmFyYmF6cXV4cXV1eA==", "a.b_c~d+e/f=g-h1"])
def test_api_keys_of_token68_characters_pass(key):
    assert api_key_problem("llamafleet_gateway_key", key) is None


def test_build_source_problems_name_the_field(tmp_path):
    archive = tmp_path / "llama.tar.gz"
    archive.write_bytes(b"")
    assert build_source_problems({"type": "archive", "archive": str(archive), "ref": "0c1e570"}) == []
    assert build_source_problems({"type": "git", "repo_url": "http://git-mirror.invalid/l.git", "ref": "b6700"}) == []
    assert build_source_problems(None) == [build_source_problems({})[0]]
    assert build_source_problems(None)[0].startswith("llamacpp_build_source is not set")
    assert build_source_problems({"type": "git", "ref": "b1"}) == [
        "llamacpp_build_source.repo_url is not set: the git repository the hosts clone llama.cpp from"]
    [missing] = build_source_problems({"type": "archive", "archive": str(tmp_path / "gone.tar.gz"), "ref": "r"})
    assert missing.startswith(f"llamacpp_build_source.archive {tmp_path}/gone.tar.gz does not exist on the controller")
    assert [p.split(" ")[0] for p in build_source_problems({"type": "svn"})] == [
        "llamacpp_build_source.type", "llamacpp_build_source.ref"]
    # relative to what? the plan and the role run from different directories: only absolute paths
    [relative] = build_source_problems({"type": "archive", "archive": "sources/l.tar.gz", "ref": "r"})
    assert relative.startswith("llamacpp_build_source.archive must be an absolute path on the controller")


def test_deploy_inputs_carry_their_finding_codes():
    problems = deploy_input_problems({"llama_server_api_key": "has a space in it!"})
    assert [code for code, _ in problems] == ["build-source-invalid", "api-key-invalid"]


def test_flags_are_checked_against_the_recorded_ref_only(monkeypatch):
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils import _inventory
    monkeypatch.setattr(_inventory, "PINNED_FLAGS", {"abc1234": frozenset({"--ctx-size", "--load-mode"})})
    servers = [{"name": "chat-0", "args": {"ctx_size": 4096, "mlock": True, "no_such_flag": 3}}]
    good = {"llama_server_api_key": "k" * 20}
    flagged = deploy_input_problems(dict(good, llamacpp_build_source={"type": "git", "repo_url": "u", "ref": "abc1234"}),
                                    servers)
    assert [(code, message.split(":")[0]) for code, message in flagged] == [("flag-unknown", "server chat-0")] * 2
    # --mlock: the rename is the hint; --no-such-flag: nothing near it
    assert "does not know --mlock (args.mlock): this llama.cpp replaced --mlock with --load-mode" in flagged[0][1]
    assert "llama-server abc1234 does not know --no-such-flag (args.no_such_flag)" in flagged[1][1]
    # a ref without a record is checked after its build only
    assert deploy_input_problems(dict(good, llamacpp_build_source={"type": "git", "repo_url": "u", "ref": "b6700"}),
                                 servers) == []
