"""The worst case, for real: every lab server gets the largest request it accepts, all at once.

Chat servers: a prompt that fills each slot's context, in every slot at the same time. Embedding
servers: an input of a full physical batch (the largest they accept). Then no container may have
been OOM-killed or restarted (exit code 137, restart count, OOMKilled: on this cgroup-v1 host
OOMKilled can stay false, testing.md), and each container's peak memory (cgroup v1
memory.max_usage_in_bytes, reset just before) must stay within what the plan says that server
needs. The plan's figures come from playbooks/plan.yml on the same inventory. Meanwhile an embedding
input one token over each embedding pool's published limit is sent to the gateway: the pool must refuse
it with 400 (its own message, not the server's).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import containers as lab_containers
from tests.integration.conftest import lab_server_key
from tests.integration.test_gateway import GATEWAY, KEY
from tests.integration.test_gateway import post as post_to_gateway

CGROUP = "/sys/fs/cgroup/memory/docker/{id}/{name}"
ROWS: list[str] = []



def post(port: int, path: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {lab_server_key()}"})
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, ConnectionError) as err:  # a killed server drops the connection
        return 0, repr(err)


def cgroup(container_id: str, name: str) -> int:
    with open(CGROUP.format(id=container_id, name=name), encoding="ascii") as handle:
        return int(handle.read())


@pytest.fixture(scope="module")
def lab_plan(tmp_path_factory):
    """plan.json of the lab inventory, as plan.yml writes it."""
    out = tmp_path_factory.mktemp("plan")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "playbooks/plan.yml",
                             "-e", f"llamafleet_report_dir={out}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    return json.loads((out / "plan.json").read_text())


def planned_mib(server: dict) -> float:
    """What the plan says one CPU-backend server needs in its container, prompt cache included."""
    dev, host = server["memory_mib"], server["host_memory_mib"]
    return (dev["model"] + dev["context"] + dev["compute"] + host["output"] + host["overhead"]
            + (host["prompt_cache"] or 0))


def largest_request(server: dict, args: dict) -> list[tuple[str, dict]]:
    """The biggest requests this server accepts, one per slot (token ids, so the length is exact)."""
    slots = server["kv"]["slots"]
    if server["role"] == "embed":
        n = min(int(args["ubatch_size"]), int(args["batch_size"])) - 2  # room for BOS/EOS
        return [("/v1/embeddings", {"input": [[1000 + i % 5000 for i in range(n)]]})] * slots
    per_slot = server["kv"]["cells"] if not server["kv"]["unified"] else server["kv"]["cells"] // slots
    n = per_slot - 16
    return [("/completion", {"prompt": [1000 + (i * 7 + s) % 5000 for i in range(n)], "n_predict": 4,
                             "cache_prompt": True}) for s in range(slots)]


def test_largest_requests_everywhere_at_once(lab, lab_plan):
    before = lab_containers()
    servers = {s["name"]: s for s in lab_plan["servers"]}
    ports = {name: int(c["Args"][c["Args"].index("--port") + 1]) for name, c in before.items()}
    args = {name: _args_of(c) for name, c in before.items()}
    for c in before.values():
        with open(CGROUP.format(id=c["Id"], name="memory.max_usage_in_bytes"), "w", encoding="ascii") as handle:
            handle.write("0")  # peak from now on, not the load
    results: dict[str, list] = {name: [] for name in before}
    threads = []
    for name in before:
        for path, body in largest_request(servers[name], args[name]):
            t = threading.Thread(target=lambda n=name, p=path, b=body: results[n].append(post(ports[n], p, b)))
            threads.append(t)
            t.start()
    pool_limit = {pool["alias"]: pool["max_input_tokens"] for pool in lab_plan["gateway"]["pools"] if "max_input_tokens" in pool}
    refused = {alias: post_to_gateway(f"{GATEWAY}/v1/embeddings", {
        "model": alias, "input": [1000 + i for i in range(limit + 1)]}, KEY) for alias, limit in pool_limit.items()}
    for t in threads:
        t.join()
    after = lab_containers()
    problems = [f"{alias}: an input over the pool's limit answered {status} {body}"
                for alias, (status, body) in refused.items()
                if status != 400 or f"take at most {pool_limit[alias]} tokens per input" not in json.dumps(body)]
    ROWS.extend(f"{alias}: an input of one token over its limit refused with {status}" for alias, (status, _) in refused.items())
    assert refused, "the lab's plan publishes no embedding pool limit"
    for name, c in after.items():
        state, was = c["State"], before[name]
        peak = cgroup(c["Id"], "memory.max_usage_in_bytes") / 2**20
        limit = c["HostConfig"]["Memory"] / 2**20
        plan = planned_mib(servers[name])
        statuses = [s for s, _ in results[name]]
        ROWS.append(f"{name:8s} requests {statuses} peak {peak:7.1f} MiB  plan {plan:7.1f} MiB  limit {limit:6.0f} MiB  "
                    f"restarts {c['RestartCount']} exit {state['ExitCode']} oom {state['OOMKilled']}")
        if not state["Running"] or state["OOMKilled"] or state["ExitCode"] == 137:
            problems.append(f"{name} died: {state}")
        if c["Id"] != was["Id"] or c["RestartCount"] != was["RestartCount"] or state["StartedAt"] != was["State"]["StartedAt"]:
            problems.append(f"{name} was restarted")
        if any(s != 200 for s in statuses):
            problems.append(f"{name} answered {results[name]}")
        if peak > plan:
            problems.append(f"{name}: peak {peak:.1f} MiB above the plan's {plan:.1f} MiB")
    print("\n".join(ROWS))
    assert not problems, "\n".join(problems + ROWS)


def _args_of(container: dict) -> dict:
    """The typed args back from the container's command line (only what largest_request reads)."""
    argv = container["Args"]

    def value(flag: str, default: str) -> str:
        return argv[argv.index(flag) + 1] if flag in argv else default
    return {"ubatch_size": int(value("--ubatch-size", "512")), "batch_size": int(value("--batch-size", "2048"))}
