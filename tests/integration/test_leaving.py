"""A server that leaves the inventory under load: drained in its gateway pool, then removed.

The lab serves a steady chat load through the gateway while site.yml runs with GPU 1 taken out of
the layout (chat-1 and embed-1 leave). The servers play must take chat-1 out of the pool and let
its requests finish before removing its container: every request chat-1 started it also finished
(its own log), no client request failed, and the containers are gone. Afterwards the lab is as
its inventory declares it again.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request

import yaml

from tests.conftest import ROOT
from tests.integration.conftest import containers, playbook

with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "all", "gateway.yml"), encoding="utf-8") as _f:
    GATEWAY = yaml.safe_load(_f)
with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "llamafleet", "lab.yml"), encoding="utf-8") as _f:
    LAYOUT = yaml.safe_load(_f)["llamafleet_server_layout"]
CHAT = next(m["alias"] for m in GATEWAY["llamafleet_gateway_models"] if m["role"] == "chat")


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


def test_a_server_removed_from_the_inventory_is_drained_first_and_no_request_is_lost(lab, capsys):
    assert {"chat-1", "embed-1"} <= set(containers())
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
        one_gpu = dict(LAYOUT, gpus=[0])
        result = playbook("site.yml", "-e", json.dumps({"llamafleet_server_layout": one_gpu}), check=False)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=180)
    if result.returncode != 0:
        playbook("site.yml")  # the lab as declared again, for the tests after this one
        raise AssertionError(f"site.yml with GPU 1 taken out failed:\n{result.stdout[-6000:]}")
    log.wait(timeout=30)
    lines = log.stdout.read().splitlines()
    launched = sum("launch_slot_" in line for line in lines)
    released = sum("stop processing" in line for line in lines)
    left = set(containers())
    with capsys.disabled():
        print(f"\n  leaving under load: {len(done)} requests through the gateway, {len(errors)} failed; chat-1 started "
              f"{launched} and finished {released} before it was removed")
    assert "Drain servers that leave the fleet" in result.stdout
    assert "chat-1" not in left and "embed-1" not in left and {"chat-0", "embed-0"} <= left
    assert launched > 0, "chat-1 took no request during the run: the load did not reach it"
    assert launched == released, f"chat-1 was removed with {launched - released} request(s) unfinished"
    assert not errors, errors[:3]

    # the lab as declared again, for the tests after this one
    playbook("site.yml")
    assert {"chat-1", "embed-1"} <= set(containers())
