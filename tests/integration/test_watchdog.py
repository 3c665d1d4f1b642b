"""End to end on the lab: the watchdog heals a killed and a frozen llama-server; Prometheus sees it all.

Real Docker, real llama-servers (the lab fixture: one site.yml bring-up per session), the real
watchdog image and the real Prometheus (Debian package). `docker kill` a chat server: the watchdog
must restart it (Docker's restart policy does not act after `docker kill`); `docker pause` one: it
must unpause it. Times are measured from the fault and printed (never asserted as speed targets).

Both faults happen under a steady load of chat requests through the gateway (LiteLLM, then the
HAProxy pool): the failed client requests (goal 0) are printed beside the watchdog's times.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import FAULT_ROWS, ROOT
from tests.integration.conftest import playbook
from tests.support.steady_load import SteadyLoad

WATCHDOG = "http://127.0.0.1:9391"      # watchdog_port, role default
PROMETHEUS = "http://127.0.0.1:9390"    # monitoring_port, role default
SERVERS = {"chat-0": 8101, "chat-1": 8102, "embed-0": 8201, "embed-1": 8202}
LIMIT_S = 180                            # a fault not healed within this is a failure, not a slow result


def running(name: str) -> bool:
    return subprocess.run(["docker", "inspect", name], capture_output=True).returncode == 0


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


def health(port: int) -> int:
    return get(f"http://127.0.0.1:{port}/health", timeout=2)[0]


def metric(text: str, name: str, **labels) -> float | None:
    """The value of the first sample of `name` carrying all `labels` in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def events(since: float, container: str = "llamafleet-watchdog") -> list[dict]:
    """The watchdog's (or its keeper's) JSON log lines from `since` on."""
    out = subprocess.run(["docker", "logs", "--since", f"{since - 1:.3f}", container],
                         capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("epoch", 0) >= since]


def prom_query(expr: str) -> dict:
    status, body = get(f"{PROMETHEUS}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, (expr, status, body)
    return json.loads(body)


@pytest.fixture(scope="module")
def watched(lab):
    """The watchdog and Prometheus on the lab; what was not running before is removed afterwards,
    so that the shared lab runs without them until site.yml brings them up."""
    before = {name: running(name) for name in ("llamafleet-watchdog", "llamafleet-watchdog-keeper", "llamafleet-prometheus")}
    playbook("playbooks/watchdog.yml")
    playbook("playbooks/monitoring.yml")
    deadline = time.time() + 120
    while time.time() < deadline:
        text = get(f"{WATCHDOG}/metrics")[1]
        if all(metric(text, "llamafleet_watchdog_up", server=s) == 1 for s in SERVERS):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the watchdog never saw every server healthy:\n{text}")
    yield
    for name, was in before.items():
        if not was:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)


GATEWAY = "http://127.0.0.1:4000"            # llamafleet_gateway_url of the lab inventory
GATEWAY_KEY = "sk-llamafleet-lab-gateway-key"  # llamafleet_gateway_key of the lab inventory (documented lab key)


class GatewayLoad(SteadyLoad):
    """Chat requests through the gateway at a steady rate in the background; counts what failed. The load
    flows 2 s before the fault and 3 s after the server is back."""

    def __init__(self, rate_per_s: float = 2.0):
        super().__init__(rate_per_s, lead_s=2, tail_s=3)

    def _one(self, i: int) -> None:
        body = json.dumps({"model": "lab-chat", "max_tokens": 8,
                           "messages": [{"role": "user", "content": f"Count to three ({i})."}]}).encode()
        req = urllib.request.Request(f"{GATEWAY}/v1/chat/completions", data=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=90) as resp:
                ok = resp.status == 200 and bool(json.load(resp)["choices"])
        except (OSError, ValueError, KeyError):
            ok = False
        with self.lock:
            self.results.append(ok)

    @property
    def failed(self) -> int:
        return sum(not ok for ok in self.results) + len(self.crashed)


def fault_and_heal(server: str, fault: str) -> dict:
    """Apply `docker <fault>` to a server; return the watchdog's events and the measured times."""
    container = f"llamafleet-{server}"
    port = SERVERS[server]
    before = get(f"{WATCHDOG}/metrics")[1]
    start = time.time()
    subprocess.run(["docker", fault, container], check=True, capture_output=True)
    seen_down = False
    back = None
    while time.time() - start < LIMIT_S:
        code = health(port)
        seen_down = seen_down or code != 200
        if seen_down and code == 200:
            back = time.time() - start
            break
        time.sleep(0.1)
    assert back is not None, f"{server} was not healthy {LIMIT_S} s after docker {fault}: {events(start)}"
    time.sleep(1.5)     # the watchdog's next tick logs "healthy"
    log = [e for e in events(start) if e.get("server") == server]
    acted = [e for e in events(start) if e["event"] in ("restart", "unpause", "action_failed")]
    failed = next(e for e in log if e["event"] == "failed")
    action = next(e for e in log if e["event"] in ("restart", "unpause"))
    return {"log": log, "acted": acted, "failed": failed, "action": action, "back": back, "start": start,
            "metrics_before": before, "metrics_after": get(f"{WATCHDOG}/metrics")[1]}


def report(what: str, result: dict, load: GatewayLoad) -> None:
    detect = result["failed"]["epoch"] - result["start"]
    act = result["action"]["epoch"] - result["start"]
    row = (f"{what:<28} detected {detect:5.2f}  {result['action']['event']} at {act:5.2f}"
           f"  (+{act - detect:.2f} after detection)  /health 200 again at {result['back']:5.2f}"
           f"  reason {result['action']['reason']}  gateway load: {load.failed} of {load.sent} requests failed")
    FAULT_ROWS.append(row)
    print(row)


def healed_under_load(server: str, fault: str, reason: str, action: str) -> dict:
    """`docker <fault>` one server under a gateway load: no client request fails, the watchdog names the
    reason, takes the action within 5 s of detection (the rule), and touches nothing else."""
    with GatewayLoad() as load:
        result = fault_and_heal(server, fault)
    report(f"docker {fault} {server}", result, load)
    assert load.failed == 0, f"{load.failed} of {load.sent} client requests failed through the gateway"
    assert result["failed"]["reason"] == reason and result["action"]["event"] == action
    assert result["action"]["since_detection_s"] <= 5
    assert [e["server"] for e in result["acted"]] == [server]
    return result


def test_killed_server_is_restarted(watched):
    result = healed_under_load("chat-0", "kill", reason="exited", action="restart")
    before = metric(result["metrics_before"], "llamafleet_watchdog_restarts_total", server="chat-0", reason="exited")
    after = metric(result["metrics_after"], "llamafleet_watchdog_restarts_total", server="chat-0", reason="exited")
    assert after == before + 1
    assert metric(result["metrics_after"], "llamafleet_watchdog_up", server="chat-0") == 1


def test_frozen_server_is_unpaused(watched):
    healed_under_load("chat-1", "pause", reason="paused", action="unpause")
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", "llamafleet-chat-1"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert state == "running"


def test_maintenance_flag_keeps_the_watchdog_away(watched):
    """What the rolling restart relies on: a server with the flag is left down."""
    flag = "/run/llamafleet/watchdog/maintenance/embed-1"
    start = time.time()
    with open(flag, "w", encoding="utf-8"):
        pass
    try:
        time.sleep(1.5)
        subprocess.run(["docker", "stop", "-t", "2", "llamafleet-embed-1"], check=True, capture_output=True)
        time.sleep(6)       # twice the time the watchdog needs to act on a stopped server
        assert health(SERVERS["embed-1"]) != 200
        assert not [e for e in events(start) if e["event"] in ("restart", "unpause")]
    finally:
        os.remove(flag)
    deadline = time.time() + LIMIT_S       # flag gone: healed like any stopped server
    while health(SERVERS["embed-1"]) != 200 and time.time() < deadline:
        time.sleep(0.5)
    assert health(SERVERS["embed-1"]) == 200
    assert [e["reason"] for e in events(start) if e["event"] == "restart"] == ["exited"]


def test_prometheus_scrapes_the_servers_and_the_watchdog(watched):
    deadline = time.time() + 90
    while time.time() < deadline:
        servers = {r["metric"].get("server") for r in prom_query('llamacpp:requests_processing{job="llama-server"}')["data"]["result"]}
        watchdog = {r["metric"].get("server") for r in prom_query("llamafleet_watchdog_up")["data"]["result"]}
        usage = {r["metric"].get("server") for r in prom_query("llamafleet:slot_usage:ratio")["data"]["result"]}
        if servers == watchdog == usage == set(SERVERS):
            break
        time.sleep(2)
    assert servers == set(SERVERS), "llamacpp: metrics of every llama-server"
    assert watchdog == set(SERVERS), "the watchdog's metrics"
    assert usage == set(SERVERS), "the slot usage rule joins both"
    restarts = prom_query('llamafleet_watchdog_restarts_total{server="chat-0",reason="exited"}')["data"]["result"]
    assert restarts and float(restarts[0]["value"][1]) >= 1, "the kill above is visible in Prometheus"


def test_every_dashboard_query_runs(watched):
    with open(os.path.join(ROOT, "roles", "monitoring", "files", "dashboards", "llamafleet-fleet.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        assert prom_query(expr)["status"] == "success", expr


def test_the_watchdog_is_a_supervised_hardened_container(watched):
    deadline = time.time() + 60      # Docker's first health check runs 15 s after the start
    while True:
        info = json.loads(subprocess.run(["docker", "inspect", "llamafleet-watchdog"], capture_output=True, text=True,
                                         check=True).stdout)[0]
        if info["State"]["Health"]["Status"] == "healthy" or time.time() > deadline:
            break
        time.sleep(2)
    assert info["State"]["Health"]["Status"] == "healthy"     # its /healthz: the loop is ticking
    host = info["HostConfig"]
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert {m["Destination"]: m["RW"] for m in info["Mounts"]}["/run/llamafleet/watchdog"] is False


# --- the fleet's other containers (label llamafleet.keep-running) ---------------------------------

# What answers once each is back (docs/gateway.md, What answers without a key).
KEPT = {"llamafleet-litellm-1": "http://127.0.0.1:4002/health/liveliness",
        "llamafleet-pools": "http://127.0.0.1:8404/metrics",
        "llamafleet-prometheus": f"{PROMETHEUS}/-/ready",
        "llamafleet-watchdog": f"{WATCHDOG}/healthz",
        "llamafleet-watchdog-keeper": None}     # serves nothing: its process is what counts


def main_pid(container: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True,
                              text=True, check=True).stdout)


def samples_before(t: float) -> float:
    """Samples Prometheus holds of the watchdog's tick gauge in the 2 minutes before `t`."""
    expr = urllib.parse.quote("count_over_time(llamafleet_watchdog_tick_seconds[2m])")
    status, body = get(f"{PROMETHEUS}/api/v1/query?query={expr}&time={t:.3f}")
    assert status == 200, body
    values = json.loads(body)["data"]["result"]
    return float(values[0]["value"][1]) if values else 0.0


def container_fault(container: str, how: str) -> dict:
    """Under the gateway load: a crash (SIGKILL to the container's main process from the host, as the OOM
    killer does: Docker's restart policy acts) or `docker kill` (Docker leaves the container stopped).
    Returns the seconds until it answered again with a new process, and the watchdog's events."""
    pid = main_pid(container)
    start = time.time()
    if how == "crash":
        os.kill(pid, 9)
    else:
        subprocess.run(["docker", "kill", container], check=True, capture_output=True)
    back = None
    while time.time() - start < LIMIT_S:
        state = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.Pid}}", container],
                               capture_output=True, text=True).stdout.split()
        if state and state[0] == "running" and int(state[1]) not in (0, pid) \
                and (KEPT[container] is None or get(KEPT[container], timeout=2)[0] == 200):
            back = time.time() - start
            break
        time.sleep(0.1)
    time.sleep(1.5)     # the watchdog's next tick logs what it saw
    log = [dict(e, by="watchdog") for e in events(start)] \
        + [dict(e, by="keeper") for e in events(start, "llamafleet-watchdog-keeper")]
    return {"back": back, "start": start,
            "acted": sorted((e for e in log if e.get("server") == container and e["event"] in ("start", "restart")),
                            key=lambda e: e["epoch"])}


def fault_row(what: str, result: dict, load: GatewayLoad, lost: str) -> None:
    acted = result["acted"][0] if result["acted"] else None
    by = f"the {acted['by']}'s {acted['event']} at {acted['epoch'] - result['start']:.2f}" if acted else "Docker's restart policy"
    back = f"{result['back']:5.2f}" if result["back"] is not None else "never"
    row = (f"{what:<28} answering again at {back} ({by});  gateway load: {load.failed} of {load.sent} "
           f"requests failed;  lost: {lost}")
    FAULT_ROWS.append(row)
    print(row)


@pytest.mark.parametrize("container,how", [("llamafleet-litellm-1", "kill"), ("llamafleet-pools", "kill"),
                                           ("llamafleet-prometheus", "crash"), ("llamafleet-prometheus", "kill"),
                                           ("llamafleet-watchdog", "crash"), ("llamafleet-watchdog", "kill"),
                                           ("llamafleet-watchdog-keeper", "kill")])
def test_the_fleets_other_containers_come_back(watched, container, how):
    """Docker restarts a crashed process by its restart policy; a container that `docker kill` stopped, it
    leaves down, and the watchdog or its keeper starts it (it is labelled llamafleet.keep-running; the two
    keep each other too). A killed LiteLLM
    instance fails no request (the other serves); the pools' HAProxy is the gateway's port, so requests
    that reach it while it is down fail (printed); Prometheus keeps the samples it had."""
    t_before = time.time() - 5
    kept_samples = samples_before(t_before)
    with GatewayLoad(rate_per_s=1.0) as load:
        result = container_fault(container, how)
    lost = "nothing"
    if container == "llamafleet-prometheus":
        after = samples_before(t_before)
        lost = f"{kept_samples - after:g} of {kept_samples:g} samples of the 2 minutes before"
        assert after == kept_samples > 0, "Prometheus lost samples it had written before the fault"
    fault_row(f"{'SIGKILL' if how == 'crash' else 'docker kill'} {container.removeprefix('llamafleet-')}", result, load, lost)
    assert result["back"] is not None, f"{container} was not answering {LIMIT_S} s after the fault: {events(result['start'])}"
    if how == "kill":
        # the watchdog and the keeper may both start it: a start of a running container changes nothing
        assert result["acted"] and {(e["event"], e["reason"]) for e in result["acted"]} == {("start", "exited")}, result["acted"]
    else:
        assert not result["acted"], "Docker restarts a crash; the watchdog must not act as well"
    if container != "llamafleet-pools":
        assert load.failed == 0, f"{load.failed} of {load.sent} requests failed"


def restart_dockerd() -> float:
    """Stop this machine's dockerd (SIGTERM, as `systemctl restart docker` does first) and start it again
    with the same command line; returns the seconds until it answered again."""
    pid = int(subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=True).stdout.split()[0])
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        argv = [a.decode() for a in handle.read().split(b"\0") if a]
    start = time.time()
    os.kill(pid, 15)
    while os.path.exists(f"/proc/{pid}") and time.time() - start < 60:
        time.sleep(0.1)
    with open("/var/log/llamafleet-dockerd.log", "ab") as log:   # docker_engine_dockerd_log, role default
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.time() - start < 120, "dockerd did not answer again within 120 s"
        time.sleep(0.2)
    return time.time() - start


def test_a_dockerd_restart_keeps_every_container_serving(watched):
    """live-restore (the docker_engine role sets it): the containers keep running while dockerd restarts,
    so no request fails and no container starts again."""
    assert subprocess.run(["docker", "info", "--format", "{{.LiveRestoreEnabled}}"], capture_output=True,
                          text=True, check=True).stdout.strip() == "true"
    names = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True,
                           check=True).stdout.split()
    started = {n: main_pid(n) for n in names}
    with GatewayLoad(rate_per_s=1.0) as load:
        down_s = restart_dockerd()
    after = {n: main_pid(n) for n in names}
    restarted = sorted(n for n in names if after[n] != started[n])
    row = (f"{'dockerd restart':<28} dockerd answering again at {down_s:5.2f}; {len(names) - len(restarted)} of "
           f"{len(names)} containers kept their process;  gateway load: {load.failed} of {load.sent} "
           f"requests failed;  lost: nothing")
    FAULT_ROWS.append(row)
    print(row)
    assert not restarted, f"these containers were restarted by the dockerd restart: {restarted}"
    assert load.failed == 0, f"{load.failed} of {load.sent} requests failed"
