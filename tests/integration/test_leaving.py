"""The lab on one GPU: a server that leaves the inventory under load, then a model group of one rolled.

The lab serves a steady chat load through the gateway while site.yml runs with GPU 1 taken out of
the layout (chat-1 and embed-1 leave), from a report directory of its own as a fresh clone would: what
leaves is read from the host's containers. The servers play must take chat-1 out of the pool and let
its requests finish before removing its container: every request chat-1 started it also finished
(its own log), no client request failed, and the containers are gone.

On that one-GPU fleet each model group has one server: a rolling restart of chat-0 under load must
start a stand-in copy beside it, point the pool at the copy while chat-0 is replaced, point it back
and remove the copy: no failed request, the chat group never without a ready server.
Afterwards the lab is as its inventory declares it again.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
import time
import urllib.request

import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.conftest import containers, playbook
from tests.integration.test_rolling_restart import run_under_load

with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "all", "gateway.yml"), encoding="utf-8") as _f:
    GATEWAY = yaml.safe_load(_f)
with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "llamafleet", "lab.yml"), encoding="utf-8") as _f:
    LAYOUT = yaml.safe_load(_f)["llamafleet_server_layout"]
CHAT = next(m["alias"] for m in GATEWAY["llamafleet_gateway_models"] if m["role"] == "chat")
ONE_GPU = dict(LAYOUT, gpus=[0])


def chat(i: int) -> None:
    """One chat completion through the gateway, as a client sends it (raises on any failure)."""
    body = {"model": CHAT, "max_tokens": 40, "temperature": 0, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Request {i}: tell a long story about a lighthouse."}]}
    req = urllib.request.Request(f"{GATEWAY['llamafleet_gateway_url']}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {GATEWAY['llamafleet_gateway_key']}"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        reply = json.load(resp)
    if not reply["choices"][0]["message"]["content"]:
        raise RuntimeError(f"empty reply: {reply}")


@pytest.fixture(scope="module")
def one_gpu(lab, tmp_path_factory):
    """GPU 1 taken out of the layout by site.yml under a chat load; afterwards the lab as declared again."""
    before = containers()
    assert {"chat-1", "embed-1"} <= set(before)
    # chat-1's own log, followed from now on: it outlives the container
    log = subprocess.Popen(["docker", "logs", "-f", "--since", "0s", "llamafleet-chat-1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, done, errors, lock = threading.Event(), [], [], threading.Lock()

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                chat(worker * 10000 + i)
                with lock:
                    done.append(i)
            except Exception as exc:  # every failed client request counts, whatever it was
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            i += 1

    workers = [threading.Thread(target=client, args=(w,)) for w in range(4)]  # 4 clients, 4 chat slots
    for worker in workers:
        worker.start()
    try:
        time.sleep(3)
        # from a report directory of its own, as a fresh clone would run it: the host says what leaves
        result = playbook("site.yml", "-e", json.dumps({"llamafleet_server_layout": ONE_GPU,
                                                        "llamafleet_report_dir": str(tmp_path_factory.mktemp("fresh"))}),
                          check=False)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=180)
    log.wait(timeout=30) if result.returncode == 0 else log.kill()
    yield {"result": result, "log": log.stdout.read().splitlines(), "done": done, "errors": errors, "before": before}
    # the lab as declared again, for the tests after these (chat-0 may run this module's override: recreated bare,
    # no load runs now)
    playbook("site.yml", "-e", json.dumps({"llama_server_recreate_whole_groups": True}))
    assert {"chat-1", "embed-1"} <= set(containers())


def test_a_server_removed_from_the_inventory_is_drained_first_and_no_request_is_lost(one_gpu, capsys):
    result, lines, done, errors = one_gpu["result"], one_gpu["log"], one_gpu["done"], one_gpu["errors"]
    assert result.returncode == 0, f"site.yml with GPU 1 taken out failed:\n{result.stdout[-6000:]}"
    launched = sum("launch_slot_" in line for line in lines)
    released = sum("stop processing" in line for line in lines)
    left = set(containers())
    with capsys.disabled():
        print(f"\n  leaving under load: {len(done)} requests through the gateway, {len(errors)} failed; chat-1 started "
              f"{launched} and finished {released} before it was removed")
    assert f"{CHAT}/lab.chat-1 on lab" in result.stdout, "chat-1 was not drained in its pool"  # the drain task's item
    assert sorted(left) == ["chat-0", "embed-0"]
    recreated = [n for n in left if containers()[n]["Id"] != one_gpu["before"][n]["Id"]]
    assert not recreated, f"remaining servers were recreated: {recreated}\n{result.stdout[-8000:]}"
    assert launched > 0, "chat-1 took no request during the run: the load did not reach it"
    assert launched == released, f"chat-1 was removed with {launched - released} request(s) unfinished"
    assert not errors, errors[:3]


def test_a_model_group_of_one_is_rolled_with_a_standin_beside_it(one_gpu, capsys):
    assert one_gpu["result"].returncode == 0, "the lab is not on one GPU (see the test before)"
    before = containers()
    result, fig_before, fig_during, gap, pools = run_under_load(
        capsys, "rolling restart of a model group of one (chat-0, alone on one GPU): ubatch_size 256 -> 128",
        "-e", json.dumps({"llamafleet_server_layout": ONE_GPU, "llamafleet_args_override": {"ubatch_size": 128},
                          "llamafleet_rolling_servers": ["chat-0"], "llamafleet_rolling_max_regression": 20}))
    assert result.returncode == 0, result.stdout[-6000:]
    # the preflight chose the stand-in (host RAM has room for a copy), and the rollout used it
    assert "lab.chat-0 (chat/lab-smollm2): a stand-in copy serves its pool while it is replaced" in result.stdout
    assert "lab.chat-0: replaced (a stand-in on port 18101 served its pool meanwhile)" in result.stdout
    after = containers()
    args = after["chat-0"]["Args"]
    assert args[args.index("--ubatch-size") + 1] == "128" and args[args.index("--port") + 1] == "8101"
    assert after["chat-0"]["Id"] != before["chat-0"]["Id"], "chat-0 was not replaced"
    assert after["embed-0"]["Id"] == before["embed-0"]["Id"], "embed-0 was restarted"
    assert set(after) == {"chat-0", "embed-0"}, f"the stand-in was left behind: {sorted(after)}"
    # chat-0 was down while it was replaced, and no other server is in its pool: only the copy can have served
    assert fig_before["failed"] == 0 and fig_during["failed"] == 0, (fig_before["errors"], fig_during["errors"])
    assert fig_during["requests"] > 0
    assert pools["pool_retries"] == 0 and pools["pool_redispatches"] == 0 and pools["server_5xx"] == 0, pools
    assert gap == {"chat": 0.0, "embed": 0.0}


def test_site_yml_rolls_out_a_changed_group_of_one_with_a_standin_too(one_gpu):
    assert one_gpu["result"].returncode == 0, "the lab is not on one GPU (see the first test)"
    before = containers()
    # chat-0's ubatch_size changed in the inventory (64: it runs 256 or, after the test before, 128)
    layout = copy.deepcopy(ONE_GPU)
    next(entry for entry in layout["per_gpu"] if entry["role"] == "chat")["args"]["ubatch_size"] = 64
    result = playbook("site.yml", "-e", json.dumps({"llamafleet_server_layout": layout}))
    assert "Rolling: point its pool at the stand-in (chat-0)" in result.stdout
    assert "Rolling: remove the stand-in (chat-0)" in result.stdout
    after = containers()
    args = after["chat-0"]["Args"]
    assert args[args.index("--ubatch-size") + 1] == "64" and after["chat-0"]["Id"] != before["chat-0"]["Id"]
    assert set(after) == {"chat-0", "embed-0"}, f"the stand-in was left behind: {sorted(after)}"
