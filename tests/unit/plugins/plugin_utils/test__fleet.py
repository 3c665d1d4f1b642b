"""The fleet model: what runs per server, written down by hand from llama-server's command line."""
from __future__ import annotations

import copy

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._fleet import fleet_host, image_digest
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import InventoryError, normalize_host

SHA = "b" * 64
HOST = {
    "llamafleet_backend": "cuda",
    "llamafleet_gpus": [{"index": 0, "name": "P106-100"}],
    "llamafleet_models": {
        "chatm": {"path": "/srv/models/chat.gguf", "sha256": SHA, "shape": "llama-3.1-8b", "quantization": "Q4_K_M"},
        "embm": {"path": "/srv/models/emb.gguf", "sha256": SHA, "shape": "llama-3.1-8b", "quantization": "Q4_K_M"},
    },
    "llamafleet_servers": [
        {"name": "chat-0", "role": "chat", "model": "chatm", "gpu": 0, "port": 8101, "container_memory": "1536m",
         "args": {"parallel": 3, "ctx_size": 8192, "flash_attn": "on"}},
        {"name": "embed-0", "role": "embed", "model": "embm", "gpu": 0, "port": 8201, "container_memory": "512m",
         "args": {"ubatch_size": 512}},
        {"name": "auto-0", "role": "chat", "model": "chatm", "gpu": 0, "port": 8301, "container_memory": "1g"},
    ],
}


def fleet(**changes):
    hv = copy.deepcopy(HOST)
    hv.update(changes)
    return {s["name"]: s for s in fleet_host(normalize_host("gpu1", hv))["servers"]}


def test_chat_argv_is_the_reserved_flags_then_the_knobs_sorted():
    assert fleet()["chat-0"]["argv"] == [
        "--model", "/models/chat.gguf", "--host", "127.0.0.1", "--port", "8101",
        "--api-key-file", "/run/llamafleet/api_key",
        "--ctx-size", "8192", "--flash-attn", "on", "--parallel", "3"]


def test_an_embed_server_gets_embeddings_once_without_declaring_it():
    argv = fleet()["embed-0"]["argv"]
    assert argv.count("--embeddings") == 1
    assert argv[-3:] == ["--embeddings", "--ubatch-size", "512"]


def test_slots_follow_llama_server_defaults():
    servers = fleet()
    # -np 3 -> 3 slots, separate caches; no -np -> llama-server's auto: 4 slots, unified KV (facts.md #5)
    assert (servers["chat-0"]["slots"], servers["chat-0"]["kv_unified"]) == (3, False)
    assert (servers["auto-0"]["slots"], servers["auto-0"]["kv_unified"]) == (4, True)


def test_names_addresses_and_mounts():
    server = fleet(llamafleet_bind_address="10.0.0.5", llamafleet_container_prefix="lf2-")["chat-0"]
    assert server["container_name"] == "lf2-chat-0"
    assert server["url"] == "http://10.0.0.5:8101"
    assert server["argv"][2:4] == ["--host", "10.0.0.5"]
    assert (server["model_path"], server["model_target"]) == ("/srv/models/chat.gguf", "/models/chat.gguf")
    assert server["gpu"] == 0


@pytest.mark.parametrize("key,value,message", [
    ("llamafleet_bind_address", "localhost", "llamafleet_bind_address must be an IP address"),
    ("llamafleet_container_prefix", "Bad Prefix", "llamafleet_container_prefix must match"),
])
def test_bad_host_settings_are_refused(key, value, message):
    with pytest.raises(InventoryError, match=message):
        fleet(**{key: value})


def test_the_servers_that_left_are_read_from_the_hosts_containers():
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._fleet import leaving
    servers = [{"name": "chat-0", "container_name": "llamafleet-chat-0"}]

    def container(name, **labels):
        return {"Names": [f"/{name}"], "Labels": {f"llamafleet.{k}": v for k, v in labels.items()}}

    present = [container("llamafleet-chat-0", server="chat-0", model="chat-model", role="chat"),   # declared: stays
               container("llamafleet-old-1", server="old-1", model="gone-model", role="chat"),
               container("llamafleet-old-0", server="old-0", model="chat-model", role="chat"),
               # the same model as old-0, serving embeddings: its own pool
               container("llamafleet-old-2", server="old-2", model="chat-model", role="embed")]
    pools_ = [{"alias": "chat", "model": "chat-model", "role": "chat"},
              {"alias": "chat-embed", "model": "chat-model", "role": "embed"}]
    assert leaving(present, servers, pools_, "gpu1") == [
        {"name": "old-0", "container_name": "llamafleet-old-0", "pool": "chat", "pool_server": "gpu1.old-0"},
        # no pool serves its model any more: nothing to drain, the container is still removed
        {"name": "old-1", "container_name": "llamafleet-old-1", "pool": None, "pool_server": "gpu1.old-1"},
        {"name": "old-2", "container_name": "llamafleet-old-2", "pool": "chat-embed", "pool_server": "gpu1.old-2"}]
    assert leaving(present[:1], servers, pools_, "gpu1") == []


def test_only_the_models_the_servers_use_are_placed():
    hv = copy.deepcopy(HOST)
    hv["llamafleet_models"]["unused"] = {"path": "/srv/models/unused.gguf", "sha256": SHA, "url": "http://mirror.invalid/u.gguf"}
    models = fleet_host(normalize_host("gpu1", hv))["models"]
    assert models == {"chatm": {"path": "/srv/models/chat.gguf", "sha256": SHA},
                      "embm": {"path": "/srv/models/emb.gguf", "sha256": SHA}}


# Expected digests from coreutils, not from hashlib:
#   printf 'FROM ${BASE_IMAGE}\nRUN apt-get install -y haproxyllamafleet/debian:bookworm' | sha256sum
#   printf '{"a": 1}' | sha256sum
def test_image_digest_is_the_first_12_hex_digits_of_the_inputs_sha256_in_order():
    dockerfile = "FROM ${BASE_IMAGE}\nRUN apt-get install -y haproxy"
    assert image_digest([dockerfile, "llamafleet/debian:bookworm"]) == "5ad3d130f1c4"
    assert image_digest(dockerfile + "llamafleet/debian:bookworm") == "5ad3d130f1c4"   # a string is one input
    assert image_digest('{"a": 1}') == "f9d86028c6e0"
    assert image_digest(["llamafleet/debian:bookworm", dockerfile]) != "5ad3d130f1c4"   # order counts


def test_image_digest_refuses_what_is_not_text():
    with pytest.raises(TypeError, match="strings"):
        image_digest(["FROM x", {"a": 1}])
