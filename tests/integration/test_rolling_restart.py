"""Rolling restart on the lab under a steady client load: no failed request, no model group without a ready server.

Real llama-servers, real containers, real HTTP. The load goes directly to the servers (not through
the gateway): each request picks a server of its model group; a connection the server
refuses, closes before sending a byte, or answers 503 while its model loads, is sent to the group's
other server, as a pool does (health checks, HAProxy `retry-on conn-failure empty-response`,
LiteLLM's retries). Every other error is a failed
request: an HTTP error, a timeout, a stream cut short, a reply with no token. So the test fails when
the rollout stops a server with a request in flight (drain not waited for), or when a group has no
server at all. A poller reads every server's /health every 0.2 s and measures, per model group, the
longest time no server of the group answered 200.

Scenarios: ubatch_size 256 -> 128 on both chat servers (replaced, verified, load unharmed), then a
chat template llama-server refuses at start (`--no-jinja --chat-template no-such-template`: it
passes the plan, which does not parse templates, and the binary exits with "the supplied chat template
is not supported"): chat-0 is rolled back, chat-1 never touched, the run fails and says why. After
each, the lab is put back as the inventory declares by a rolling restart without override.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import threading
import time

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import containers, playbook

GROUPS = {"chat": [8101, 8102], "embed": [8201, 8202]}
POLL_S = 0.2
BEFORE_S = 20


def api_key() -> str:
    with open(os.path.join(ROOT, ".cache", "lab-api-key"), encoding="utf-8") as handle:
        return handle.read().split()[0]


class Rerouted(Exception):
    """The server refused the connection or closed it before answering: the request never started there."""


def request(port: int, path: str, body: dict, key: str) -> float | None:
    """One request; its TTFT for a streamed chat completion (None otherwise). Raises on failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.monotonic()
    try:
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {key}"})
            resp = conn.getresponse()
        except (ConnectionRefusedError, http.client.RemoteDisconnected, ConnectionResetError) as exc:
            raise Rerouted(str(exc)) from None
        if resp.status == 503:
            # llama-server listens while it loads its model and answers 503 "Loading model": not ready,
            # which a pool's health check (or the gateway's retry) keeps clients away from
            raise Rerouted(f"HTTP 503 {resp.read()[:80]!r}")
        if resp.status != 200:
            raise AssertionError(f"HTTP {resp.status} from :{port}{path}: {resp.read()[:200]!r}")
        if not body.get("stream"):
            data = json.loads(resp.read())
            if "embedding" in path:
                assert data["data"][0]["embedding"], "empty embedding"
            else:
                assert data["usage"]["completion_tokens"] >= 1, "no token"
            return None
        ttft = None
        done = False
        for raw in resp:
            line = raw.decode().strip()
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data:") and ttft is None:
                event = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                    ttft = time.monotonic() - start
        assert done and ttft is not None, f"stream from :{port} ended early (done={done}, ttft={ttft})"
        return ttft
    finally:
        conn.close()


class Load:
    """Two chat clients (streamed and not, in turn) and one embedding client, plus a /health poller."""

    def __init__(self):
        self.key = api_key()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[dict] = []   # {t, kind, ok, ttft, error, rerouted}
        self.gap = {g: 0.0 for g in GROUPS}
        self.threads = [threading.Thread(target=self.client, args=("chat", i), daemon=True) for i in range(2)]
        self.threads.append(threading.Thread(target=self.client, args=("embed", 0), daemon=True))
        self.threads.append(threading.Thread(target=self.poll, daemon=True))

    def client(self, group: str, seed: int):
        rng = random.Random(seed)
        n = 0
        while not self.stop.is_set():
            n += 1
            stream = group == "chat" and n % 2 == 0
            if group == "chat":
                path = "/v1/chat/completions"
                body = {"messages": [{"role": "user", "content": f"Name {rng.choice(['a colour', 'a fruit', 'a city'])}."}],
                        "max_tokens": 16, "temperature": 0, "stream": stream}
            else:
                path, body = "/v1/embeddings", {"input": f"lamp {n}"}
            ports = GROUPS[group][:]
            rng.shuffle(ports)
            record = {"t": time.monotonic(), "kind": "stream" if stream else group, "ok": False, "ttft": None,
                      "error": None, "rerouted": 0}
            for attempt in range(6):
                try:
                    record["ttft"] = request(ports[attempt % 2], path, body, self.key)
                    record["ok"] = True
                    break
                except Rerouted:
                    record["rerouted"] += 1
                    time.sleep(0.1)
                except Exception as exc:  # noqa: BLE001 (every other error is a failed client request)
                    record["error"] = f":{ports[attempt % 2]} {type(exc).__name__}: {exc}"
                    break
            else:
                record["error"] = "no server of the group accepted the request in 6 tries"
            with self.lock:
                self.records.append(record)
            time.sleep(0.2)

    def poll(self):
        down_since: dict[str, float | None] = {g: None for g in GROUPS}
        while not self.stop.is_set():
            now = time.monotonic()
            for group, ports in GROUPS.items():
                ready = False
                for port in ports:
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                        conn.request("GET", "/health")
                        ready = ready or conn.getresponse().status == 200
                        conn.close()
                    except OSError:
                        pass
                if ready:
                    down_since[group] = None
                else:
                    down_since[group] = down_since[group] or now
                    self.gap[group] = max(self.gap[group], now - down_since[group] + POLL_S)
            time.sleep(POLL_S)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)

    def figures(self, since: float, until: float) -> dict:
        rows = [r for r in self.records if since <= r["t"] < until]
        ttfts = sorted(r["ttft"] for r in rows if r["ttft"] is not None)
        p95 = ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))] if ttfts else None
        return {"requests": len(rows), "failed": sum(not r["ok"] for r in rows),
                "rerouted": sum(r["rerouted"] for r in rows), "errors": [r["error"] for r in rows if r["error"]][:5],
                "ttft_p50": statistics.median(ttfts) if ttfts else None, "ttft_p95": p95}


def show(title: str, before: dict, during: dict, gap: dict):
    def f(v):
        return "-" if v is None else f"{v:.3f} s"
    print(f"\n{title} (load directly on the servers, not through the gateway)")
    print(f"  {'':8} {'requests':>8} {'failed':>6} {'rerouted':>8} {'TTFT p50':>10} {'TTFT p95':>10}")
    for name, fig in (("before", before), ("during", during)):
        print(f"  {name:8} {fig['requests']:>8} {fig['failed']:>6} {fig['rerouted']:>8} {f(fig['ttft_p50']):>10} "
              f"{f(fig['ttft_p95']):>10}")
    print("  longest time a model group had no ready server: "
          + ", ".join(f"{g} {v:.1f} s" for g, v in gap.items()))
    for error in before["errors"] + during["errors"]:
        print(f"  failed: {error}")


def args_of(cs: dict) -> dict:
    return {name: c["Args"] for name, c in cs.items()}


def back_to_inventory():
    """Roll every running server back to what the inventory declares (one at a time: no outage), then
    site.yml for anything not running (a test that failed half-way may leave one restarting)."""
    playbook("playbooks/rolling_restart.yml", "-e", json.dumps({"llamafleet_rolling_max_regression": 100}), check=False)
    playbook("site.yml")


@pytest.fixture
def lab_as_declared(lab):
    back_to_inventory()
    before = containers()
    yield before
    back_to_inventory()
    assert args_of(containers()) == args_of(before), "the lab is not back as the inventory declares"


def run_under_load(*extra: str):
    with Load() as load:
        time.sleep(BEFORE_S)
        started = time.monotonic()
        result = playbook("playbooks/rolling_restart.yml", *extra, check=False)
        ended = time.monotonic()
        time.sleep(3)  # requests sent just before the end finish
    return result, load.figures(0, started), load.figures(started, ended + 3), dict(load.gap)


def test_ubatch_change_rolls_through_both_chat_servers_without_a_failed_request(lab_as_declared):
    before = lab_as_declared
    result, fig_before, fig_during, gap = run_under_load(
        "-e", json.dumps({"llamafleet_args_override": {"ubatch_size": 128}, "llamafleet_rolling_servers": ["chat-*"],
                          # the lab's 2 cores are shared by the load, 4 servers and Ansible: one smoke request's
                          # tokens/s swings 4x there (measured: 102.7 -> 23.3). The bound is exercised by the unit
                          # tests; this scenario is about the load.
                          "llamafleet_rolling_max_regression": 20}))
    show("rolling restart ubatch_size 256 -> 128 on chat-0, chat-1", fig_before, fig_during, gap)
    assert result.returncode == 0, result.stdout[-6000:]
    after = containers()
    for name in ("chat-0", "chat-1"):
        args = after[name]["Args"]
        assert args[args.index("--ubatch-size") + 1] == "128", name
        assert after[name]["Id"] != before[name]["Id"], f"{name} was not replaced"
    for name in ("embed-0", "embed-1"):
        assert after[name]["Id"] == before[name]["Id"], f"{name} was restarted"
    assert "lab.chat-0: replaced" in result.stdout and "lab.chat-1: replaced" in result.stdout
    assert "--ubatch-size 256 -> 128" in result.stdout
    assert "now differs from the inventory" in result.stdout
    assert fig_before["failed"] == 0 and fig_during["failed"] == 0, (fig_before["errors"], fig_during["errors"])
    assert fig_during["requests"] > 0
    assert gap == {"chat": 0.0, "embed": 0.0}


def test_a_setting_the_server_refuses_is_rolled_back_and_stops_the_rollout(lab_as_declared):
    before = lab_as_declared
    result, fig_before, fig_during, gap = run_under_load(
        "-e", json.dumps({"llamafleet_args_override": {"chat_template": "no-such-template", "jinja": False},
                          "llamafleet_rolling_servers": ["chat-*"]}),
        "-e", json.dumps({"llama_server_health_timeout": 30}))
    show("rolling restart with --chat-template no-such-template (refused at start)", fig_before, fig_during, gap)
    assert result.returncode != 0, result.stdout[-6000:]
    assert "The rolling restart stopped at chat-0 on lab" in result.stdout
    assert "lab.chat-0: rolled back" in result.stdout
    assert "did not answer 200 within 30 s" in result.stdout
    assert "the supplied chat template is not supported" in result.stdout  # the server's own log line
    assert "not replaced (the rollout stopped first; they run as before): lab.chat-1" in result.stdout
    after = containers()
    assert args_of(after) == args_of(before), "a server does not run its previous configuration"
    assert after["chat-1"]["Id"] == before["chat-1"]["Id"], "chat-1 was touched after the failure"
    assert all(c["State"]["Running"] for c in after.values())
    assert fig_before["failed"] == 0 and fig_during["failed"] == 0, (fig_before["errors"], fig_during["errors"])
    assert gap == {"chat": 0.0, "embed": 0.0}


@pytest.mark.parametrize("extra,message", [
    ({"llamafleet_rolling_servers": ["chta-*"]}, "'chta-*' matches no server"),
    ({"llamafleet_rolling_max_regression": "fast"}, "llamafleet_rolling_max_regression must be a number"),
    ({"llamafleet_rolling_servers": ["embed-0"], "llamafleet_server_layout": {"gpus": [0], "per_gpu": [
        {"role": "chat", "model": "lab-smollm2", "port_base": 8101, "container_memory": "768m",
         "args": {"ctx_size": 4096, "parallel": 2, "threads": 1, "cache_ram": 128}},
        {"role": "embed", "model": "lab-gemma", "port_base": 8201, "container_memory": "512m",
         "args": {"ctx_size": 512, "parallel": 1, "batch_size": 512, "ubatch_size": 512, "cache_ram": 0,
                  "pooling": "mean", "threads": 1}}]}},
     "embed-0 is the only server of model group embed/lab-gemma"),
    # The lab plan's chat server: TTFT 1.07 s for 200 prompt tokens and 234.7 tok/s over its 2 slots, so a request
    # holds a slot 1.07 + 64 / (234.7 / 2) = 1.615 s. 100 requests/min: 100 / 60 x 1.615 = 2.69 busy slots, 67 % of
    # the fleet's 4 (the plan passes) but 135 % of the 2 left while one server is out.
    ({"llamafleet_workload": {"lab-smollm2": {"requests_per_minute": 100, "prompt_tokens": 200, "reply_tokens": 64}}},
     "utilisation 135%, the queue grows without bound"),
], ids=["no-match", "bound-not-a-number", "group-of-one", "rest-cannot-carry-the-load"])
def test_bad_input_is_refused_before_any_drain(lab, extra, message):
    before = {n: (c["Id"], c["State"]["StartedAt"]) for n, c in containers().items()}
    result = playbook("playbooks/rolling_restart.yml", "-e", json.dumps(extra), check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout[-3000:]
    assert "Rolling: take it out of its pool" not in result.stdout and "in-flight" not in result.stdout
    assert {n: (c["Id"], c["State"]["StartedAt"]) for n, c in containers().items()} == before
