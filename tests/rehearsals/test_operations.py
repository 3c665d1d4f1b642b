"""Rehearsals d and e (issue 18, docs/sim.md): a rolling restart and the watchdog on the simulated first
user's host, under the first user's load. Opt-in (`scripts/test.sh --rehearsals`).

The load is what the first user's clients send, through the rehearsal's gateway (LiteLLM on :4500):
streamed chat requests at 30 a minute, to both chat models, each with its conversation's key, and as many
embeddings. They are never retried, so an HTTP error, a timeout, a stream cut short or a reply with no token counts as a failed request.

- d: the rolling restart replaces all 8 chat servers with one knob changed (ubatch_size 64 -> 128).
  Every server is drained, replaced and verified in turn while the load runs. Then a chat template the
  servers refuse at start: the first server is rolled back, the rollout stops, the others are untouched.
- e: the watchdog at scale. Two of the 16 servers are killed (docker kill) and one is frozen (docker
  pause), all at once, under the load. Printed: the failed requests and the seconds until each of the
  three answers /health with 200 again.

The servers sleep what the plan says the cards take. These figures are therefore those of the fleet
around the servers (LiteLLM, the pools, the watchdog, Docker), not of the cards.
"""
from __future__ import annotations

import http.client
import json
import subprocess
import time
import urllib.request

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_probe import health
from tests.integration.conftest import playbook
from tests.support.rehearsal_fleet import GATEWAY_KEY, GATEWAY_PORT, HOST, INVENTORY, OTHERS, sim_containers
from tests.support.steady_load import SteadyLoad

CHAT_MODELS, EMBED_MODEL = ["stheno", "lumimaid"], "embed"    # inventory/rehearsal/group_vars/all/gateway.yml
WATCHDOG_PORT = 9491  # inventory/rehearsal/group_vars/llamafleet/host.yml
RATE_PER_MIN = 30      # chat requests a minute, the first user's load; as many embeddings beside them


class FirstUserLoad(SteadyLoad):
    """Streamed chat requests and embeddings through the rehearsal's gateway, each at a steady rate, in the
    background: requests alternate, a chat request then an embedding. The load flows 10 s before the
    operation and 10 s after it."""

    def __init__(self, rate_per_min: float = RATE_PER_MIN, reply_tokens: int = 32):
        super().__init__(2 * rate_per_min / 60, lead_s=10, tail_s=10)
        self.reply_tokens = reply_tokens

    def _embed(self, i: int) -> None:
        started, error = time.monotonic(), None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=120)
            conn.request("POST", "/v1/embeddings", json.dumps({"model": EMBED_MODEL, "input": f"A note to remember, {i}."}),
                         {"Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}"})
            resp = conn.getresponse()
            raw = resp.read().decode()
            conn.close()
            if resp.status != 200:
                error = f"embedding: HTTP {resp.status}: {raw[:200]}"
            elif not json.loads(raw)["data"][0]["embedding"]:
                error = "embedding: empty vector"
        except (OSError, ValueError, KeyError, IndexError, http.client.HTTPException) as exc:
            error = f"embedding: {type(exc).__name__}: {exc}"
        with self.lock:
            self.results.append({"kind": "embed", "started": started, "ended": time.monotonic(), "error": error})

    def _one(self, i: int) -> None:
        if i % 2:
            self._embed(i)
            return
        started = time.monotonic()
        body = {"model": CHAT_MODELS[i // 2 % 2], "stream": True, "max_tokens": self.reply_tokens,
                "messages": [{"role": "user", "content": f"Tell me about your day, part {i}."}]}
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}",
                   "X-Llamafleet-Conversation": f"conversation-{i // 2 % 10}"}
        error = None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", GATEWAY_PORT, timeout=120)
            conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            resp = conn.getresponse()
            raw = resp.read().decode()
            conn.close()
            events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
            tokens = sum(1 for e in events if e != "[DONE]" and any(
                c.get("delta", {}).get("content") for c in json.loads(e).get("choices", [])))
            if resp.status != 200:
                error = f"HTTP {resp.status}: {raw[:200]}"
            elif not events or events[-1] != "[DONE]":
                error = "stream cut short"
            elif not tokens:
                error = "no token"
        except (OSError, ValueError, http.client.HTTPException) as exc:   # IncompleteRead: a stream cut short
            error = f"{type(exc).__name__}: {exc}"
        with self.lock:
            self.results.append({"kind": "chat", "started": started, "ended": time.monotonic(), "error": error})

    def failed(self) -> list[str]:
        return [r["error"] for r in self.results if r["error"]] + self.crashed

    def counted(self) -> str:
        chat = sum(r["kind"] == "chat" for r in self.results)
        return (f"{chat} chat requests and {len(self.results) - chat} embeddings"
                + (f" and {len(self.crashed)} that raised" if self.crashed else "") + f", {len(self.failed())} failed")


def cpu_seconds(names: list[str]) -> dict[str, float]:
    """Each container's CPU time so far, in seconds: its cgroup's counter, found through its main process's
    /proc/<pid>/cgroup (cgroup v2 cpu.stat, or v1 cpuacct.usage). Files, not Docker's stats API, which takes
    a second a container: every container's window is the same."""
    pids = dict(line.split() for line in subprocess.run(
        ["docker", "inspect", "--format", "{{.Name}} {{.State.Pid}}", *names], capture_output=True, text=True,
        check=True).stdout.splitlines())
    out = {}
    for name, pid in pids.items():
        with open(f"/proc/{pid}/cgroup", encoding="ascii") as handle:
            groups = {controllers: path for _, controllers, path in (line.rstrip("\n").split(":", 2) for line in handle)}
        v1 = next((path for controllers, path in groups.items() if "cpuacct" in controllers.split(",")), None)
        if v1 is not None:
            with open(f"/sys/fs/cgroup/cpuacct{v1}/cpuacct.usage", encoding="ascii") as handle:
                out[name.lstrip("/")] = int(handle.read()) / 1e9
        else:
            with open(f"/sys/fs/cgroup{groups['']}/cpu.stat", encoding="ascii") as handle:
                out[name.lstrip("/")] = int(dict(line.split() for line in handle)["usage_usec"]) / 1e6
    return out


def test_the_fleets_own_cpu_at_the_first_users_load(rehearsal):
    """Issue 18, item 6: what LiteLLM, the pools (HAProxy), the watchdog, its keeper and Prometheus cost in
    CPU at the first user's load, per request and as a share of one core. Read from the containers' cgroup
    counters over 60 s of the load; the simulated servers' own CPU is printed too, but a real llama-server's differs."""
    others = list(OTHERS)
    servers = [c["Name"].lstrip("/") for c in sim_containers().values()]
    with FirstUserLoad() as load:
        before, started = cpu_seconds(others + servers), time.monotonic()
        time.sleep(60)
        after, seconds = cpu_seconds(others + servers), time.monotonic() - started
    served = len([r for r in load.results if started <= r["started"] <= started + seconds])
    used = {name: after[name] - before[name] for name in after}
    rows = [(name.replace("llamafleet-rehearsal-", ""), used[name]) for name in others]
    rows.append((f"the {len(servers)} simulated servers", sum(used[name] for name in servers)))
    print(f"\nthe fleet's own CPU (measured on simulated servers, this machine's 2 cores): {seconds:.0f} s at {RATE_PER_MIN} "
          f"chat requests and {RATE_PER_MIN} embeddings a minute, {served} requests sent in that time, {load.counted()}")
    for name, cpu in rows:
        print(f"  {name}: {cpu:.2f} CPU s, {100 * cpu / seconds:.1f}% of one core, {1000 * cpu / max(served, 1):.1f} ms a request")
    assert served > 0 and not load.failed(), load.failed()[:5]
    assert all(cpu > 0 for _, cpu in rows), rows   # every component was read, and each did some work


def ubatch(container: dict) -> str:
    args = container["Config"]["Cmd"]
    return args[args.index("--ubatch-size") + 1]


def test_d_a_rolling_restart_of_all_8_chat_servers_under_the_first_users_load_fails_no_request(rehearsal):
    before = sim_containers()
    with FirstUserLoad() as load:
        started = time.monotonic()
        result = playbook("playbooks/rolling_restart.yml", "-i", INVENTORY, "-e", json.dumps({
            "llamafleet_args_override": {"ubatch_size": 128}, "llamafleet_rolling_servers": ["chat-*"]}), check=False)
        took = time.monotonic() - started
    summary = result.stdout[result.stdout.rfind("Rolling restart: "):].split("\n\n")[0]
    print(f"\nrehearsal d (measured on simulated servers): the rolling restart of 8 chat servers (ubatch_size 64 -> 128) "
          f"took {took:.0f} s under {RATE_PER_MIN} streamed chat requests and {RATE_PER_MIN} embeddings a minute "
          f"through the gateway: {load.counted()}\n{summary}")
    assert result.returncode == 0, result.stdout[-6000:]
    after = sim_containers()
    for i in range(8):
        name = f"chat-{i}"
        assert after[name]["Id"] != before[name]["Id"] and ubatch(after[name]) == "128", name
        assert f"first-user-sim.{name}: replaced" in result.stdout
    for i in range(8):   # the embedding servers were not chosen: untouched
        assert after[f"embed-{i}"]["Id"] == before[f"embed-{i}"]["Id"]
    assert load.results and not load.failed(), load.failed()[:5]


def test_d_a_flag_the_servers_refuse_is_rolled_back_at_the_first_server_and_fails_no_request(rehearsal):
    """A chat template llama-server refuses at start without --jinja (the simulator refuses it with the
    binary's words: tests/integration/test_sim_contract.py). The plan does not parse templates, so it passes."""
    before = sim_containers()
    with FirstUserLoad() as load:
        result = playbook("playbooks/rolling_restart.yml", "-i", INVENTORY, "-e", json.dumps({
            "llamafleet_args_override": {"chat_template": "no-such-template", "jinja": False},
            "llamafleet_rolling_servers": ["chat-*"], "llama_server_health_timeout": 30}), check=False)
    print("\nrehearsal d, rollback (measured on simulated servers): a chat template the servers refuse, under "
          f"{RATE_PER_MIN} streamed chat requests and {RATE_PER_MIN} embeddings a minute: {load.counted()}")
    assert result.returncode != 0, result.stdout[-6000:]
    assert "The rolling restart stopped at chat-0 on first-user-sim" in result.stdout
    assert "first-user-sim.chat-0: rolled back" in result.stdout
    assert "the supplied chat template is not supported" in result.stdout   # the server's own words, shown
    after = sim_containers()
    assert after["chat-0"]["Config"]["Cmd"] == before["chat-0"]["Config"]["Cmd"]
    assert after["chat-0"]["State"]["Running"]
    for i in range(1, 8):
        assert after[f"chat-{i}"]["Id"] == before[f"chat-{i}"]["Id"], f"chat-{i} was touched after the failure"
    assert load.results and not load.failed(), load.failed()[:5]


def test_e_the_watchdog_heals_2_killed_and_1_frozen_of_16_servers_under_the_first_users_load(rehearsal):
    found = sim_containers()
    faults = {"chat-2": "kill", "embed-5": "kill", "chat-6": "pause"}
    reasons = {"kill": "exited", "pause": "paused"}   # what the watchdog names each fault
    ports = {s["name"]: s["port"] for s in rehearsal["plan"]["fleet"][HOST]["servers"] if s["name"] in faults}
    healed: dict[str, float] = {}
    with FirstUserLoad() as load:
        struck = time.monotonic()
        for name, how in faults.items():
            subprocess.run(["docker", how, found[name]["Name"].lstrip("/")], check=True, capture_output=True)
        seen_down = set()
        while len(healed) < len(faults) and time.monotonic() - struck < 150:
            for name, port in ports.items():
                if name in healed:
                    continue
                status = health(f"http://127.0.0.1:{port}", timeout=1)
                if status != 200:
                    seen_down.add(name)
                elif name in seen_down:
                    healed[name] = time.monotonic() - struck
            time.sleep(0.2)
    print("\nrehearsal e (measured on simulated servers): 2 of 16 servers killed and 1 frozen at once under "
          f"{RATE_PER_MIN} streamed chat requests and {RATE_PER_MIN} embeddings a minute through the gateway: "
          f"{load.counted()}; healthy again after " +
          ", ".join(f"{name} ({faults[name]}) {healed[name]:.1f} s" if name in healed else f"{name} not within 150 s"
                    for name in faults) + (f"; the failures: {load.failed()[:5]}" if load.failed() else ""))
    assert sorted(healed) == sorted(faults), f"not healthy again: {sorted(set(faults) - set(healed))}"
    # healed by the watchdog (Docker's restart policy leaves a killed container down), for the reason it saw
    with urllib.request.urlopen(f"http://127.0.0.1:{WATCHDOG_PORT}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    for name, how in faults.items():
        assert f'llamafleet_watchdog_restarts_total{{server="{name}",reason="{reasons[how]}"}} 1' in metrics, name
    assert load.results and not load.failed(), load.failed()[:5]
