"""End to end on the lab inventory: site.yml brings real llama-servers up and keeps them as declared.

Real Docker, the real llama.cpp build, the real Gemma 3 270M model, real HTTP requests. The
tests run in order: deploy, idempotence, requests, container contract, a one-server args change,
then bad input that must be refused with every container left as it was. (A server removed from the
inventory is removed from the host under load in test_leaving.)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._llama_server_flags import PINNED_FLAGS
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import parse_help_flags
from tests.conftest import ROOT
from tests.integration.conftest import containers, lab_server_key, playbook, recap_changed

SERVERS = {"chat-0": 8101, "chat-1": 8102, "embed-0": 8201, "embed-1": 8202}
# -e replaces llamafleet_models whole: overrides of the embedding model keep the chat model as the lab has it
LAB_CHAT_MODEL = {"lab-smollm2": {
    "src": os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "path": "/var/lib/llamafleet/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}}



def post(port: int, path: str, body: dict, key: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def deployed(lab):
    return lab


def second_clone_inventory(tmp_path) -> str:
    """inventory/lab as another clone of this commit holds it: its own .cache with the lab's inputs
    (models, the source archive) and no servers' key of its own."""
    inventory = tmp_path / "inventory" / "lab"
    shutil.copytree(os.path.join(ROOT, "inventory", "lab"), inventory)
    (tmp_path / ".cache").mkdir()
    for name in ("models", "sources"):
        os.symlink(os.path.join(ROOT, ".cache", name), tmp_path / ".cache" / name)
    return str(inventory)


def test_second_run_from_another_clone_changes_nothing(deployed, tmp_path):
    # the lab is shared by the whole session and already converged (the lab fixture, then every test that
    # changes it puts it back): a run that changes nothing proves it; one that did converge is run again.
    # It runs from a second clone's inventory: the servers' key is the host's, so that clone manages the
    # same servers (with a key of its own, it would refuse to recreate every server at once).
    inventory = second_clone_inventory(tmp_path)
    result = playbook("-i", inventory, "site.yml")
    if recap_changed(result.stdout):
        result = playbook("-i", inventory, "site.yml")
    assert recap_changed(result.stdout) == 0, result.stdout[-3000:]
    assert not (tmp_path / ".cache" / "lab-api-key").exists()   # no key generated in that clone


def test_chat_completion_answers(deployed):
    for name in ("chat-0", "chat-1"):
        status, body = post(SERVERS[name], "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}, lab_server_key())
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] is not None
        assert body["usage"]["completion_tokens"] >= 1


def test_embedding_answers(deployed):
    for name in ("embed-0", "embed-1"):
        status, body = post(SERVERS[name], "/v1/embeddings", {"input": "a lamp"}, lab_server_key())
        assert status == 200, body
        vector = body["data"][0]["embedding"]
        assert len(vector) == 640 and any(abs(v) > 0 for v in vector)


def test_requests_without_the_key_are_refused(deployed):
    status, _ = post(SERVERS["chat-0"], "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, None)
    assert status == 401
    status, _ = post(SERVERS["embed-0"], "/v1/embeddings", {"input": "x"}, "wrong-key")
    assert status == 401


def test_container_contract(deployed):
    for name, c in deployed.items():
        host = c["HostConfig"]
        assert c["State"]["Running"], name
        assert c["Config"]["Labels"]["llamafleet.role"] == name.split("-")[0]
        assert c["Config"]["User"] == "10001:10001"
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Memory"] == (768 if name.startswith("chat") else 1408) * 2**20
        assert host["LogConfig"]["Type"] == "json-file" and host["LogConfig"]["Config"]["max-size"] == "10m"
        assert host["NetworkMode"] == "host"
        args = c["Args"]
        assert args[args.index("--host") + 1] == "127.0.0.1"
        assert args[args.index("--port") + 1] == str(SERVERS[name])
        model = [m for m in c["Mounts"] if m["Destination"].startswith("/models/")]
        assert len(model) == 1 and model[0]["RW"] is False
        assert c["Config"]["Healthcheck"]["Test"][:2] == ["CMD", "curl"]


def test_changed_args_restart_exactly_that_server(deployed):
    before = containers()
    override = json.dumps({"llamafleet_servers": [{"name": "chat-1", "args": {"ctx_size": 2048}}]})
    result = playbook("site.yml", "-e", override)
    after = containers()
    try:
        assert after["chat-1"]["Id"] != before["chat-1"]["Id"]
        assert "2048" in after["chat-1"]["Args"]
        for name in ("chat-0", "embed-0", "embed-1"):
            assert after[name]["Id"] == before[name]["Id"], f"{name} was restarted"
            assert after[name]["State"]["StartedAt"] == before[name]["State"]["StartedAt"]
        assert "chat-1" in result.stdout
    finally:
        playbook("site.yml")  # back to the inventory as written
    assert containers()["chat-1"]["Args"] == before["chat-1"]["Args"]


BAD_INPUT = [
    ({"llamafleet_servers": [{"name": "embed-1", "port": 8101}]}, "port 8101 is already used by server chat-0"),
    ({"llamafleet_servers": [{"name": "chat-0", "role": "judge"}]}, "role must be one of chat, embed"),
    ({"llamafleet_servers": [{"name": "chat-0", "model": "ghost"}]}, "model 'ghost' is not in llamafleet_models"),
    ({"llamafleet_servers": [{"name": "chat-0", "args": {"ctx_size": "lots"}}]}, "args.ctx_size must be an integer"),
    ({"llamafleet_backend": "cuda", "llamafleet_gpus": [{"index": 0, "name": "P106-100"}],
      "llamafleet_servers": [{"name": "chat-1", "gpu": 3}]}, "gpu 3 does not exist"),
    ({"llamafleet_servers": [{"name": "chat-0", "args": {"mlock": True}}]}, "load_mode"),
    ({"llamafleet_servers": [{"name": "chat-0", "args": {"cache_ram": 4096}}]}, "prompt-cache-exceeds-container"),
    ({"llamafleet_models": {**LAB_CHAT_MODEL, "lab-gemma": {
        "src": "/etc/hostname", "path": "/var/lib/llamafleet/models/other.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"}}},
     "not a GGUF file"),
    # the one change site.yml cannot roll: the pools and the running servers hold the old key
    ({"llama_server_api_key": "a-new-servers-key-0123456789"},
     "llama_server_api_key differs from the key 4 running server(s) of lab and the gateway's pools use"),
]


@pytest.mark.parametrize("override,message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_is_refused_and_changes_nothing(deployed, override, message):
    before = {n: (c["Id"], c["State"]["StartedAt"]) for n, c in containers().items()}
    result = playbook("site.yml", "-e", json.dumps(override), check=False)
    assert result.returncode != 0
    # the console prints a long message folded over several lines
    assert message in " ".join((result.stdout + result.stderr).split()), result.stdout[-4000:]
    after = {n: (c["Id"], c["State"]["StartedAt"]) for n, c in containers().items()}
    assert after == before


def test_unknown_flag_is_refused_by_the_plan_before_anything_changes(deployed):
    """A flag the pinned llama-server does not know stops the plan (its flags are recorded); the role's
    check against the built binary's --help stays as a second line for refs without a record."""
    before = {n: c["Id"] for n, c in containers().items()}
    override = {"llamafleet_servers": [{"name": "chat-0", "args": {"no_such_flag": 3}}]}
    result = playbook("site.yml", "-e", json.dumps(override), check=False)
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "ERROR [flag-unknown] lab: server chat-0: llama-server 0c1e570 does not know --no-such-flag" in out
    assert "Nothing was changed on any host" in out
    assert {n: c["Id"] for n, c in containers().items()} == before


def test_the_recorded_flags_of_the_pinned_ref_are_the_built_binarys(lab_image):
    """The plan's record of 0c1e570's flags (_llama_server_flags) is exactly what the lab's binary lists."""
    help_text = subprocess.run(["docker", "run", "--rm", "--network", "none", lab_image, "--help"],
                               capture_output=True, text=True, check=True, timeout=120).stdout
    assert PINNED_FLAGS["0c1e570"] == parse_help_flags(help_text)


def test_sha256_mismatch_is_refused_and_changes_nothing(deployed, tmp_path):
    before = {n: c["Id"] for n, c in containers().items()}
    target = "/var/lib/llamafleet/models/mismatch.gguf"
    override = {"llamafleet_models": {**LAB_CHAT_MODEL, "lab-gemma": {
        "src": os.path.join(ROOT, ".cache", "models", "gemma-3-270m-q4_k_m.gguf"), "path": target, "sha256": "1" * 64}}}
    result = playbook("site.yml", "-e", json.dumps(override), check=False)
    assert result.returncode != 0
    assert "sha256" in result.stdout and "Nothing was placed" in result.stdout
    assert not os.path.exists(target) and not os.path.exists(target + ".part")
    assert {n: c["Id"] for n, c in containers().items()} == before
