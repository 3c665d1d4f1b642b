"""The watchdog's decisions, by hand: state machine, backoff, one action at a time, GPU health.

Expected values are written out from the rules in docs/watchdog.md (worked by hand in the
comments), not recomputed with the module's functions.
"""
from __future__ import annotations

import calendar
import http.server
import json
import os
import socket
import stat
import sys
import threading
import time

import pytest

from tests.conftest import ROOT

# the daemon ships as a file of its image (roles/watchdog/files), imported here as the image runs it
sys.path.insert(0, os.path.join(ROOT, "roles", "watchdog", "files"))
from llamafleet_watchdog import (  # noqa: E402
    Config,
    ConfigError,
    GpuMonitor,
    Observation,
    Policy,
    Server,
    Supervisor,
    backoff_s,
    check_health,
    flag_set,
    load_config,
    log_line,
    parse_docker_time,
    parse_nvidia_smi,
    parse_xid,
    render_metrics,
)

# 3 failed checks in a row make a failure; backoff 2 s doubling to 30 s; stable after 100 s healthy.
POLICY = Policy(interval_s=1, health_timeout_s=2, failures_before_action=3, start_grace_s=60,
                backoff_initial_s=2, backoff_max_s=30, backoff_reset_s=100)
CHAT0 = Server("chat-0", "llamafleet-chat-0", 8101, "chat", gpu=0, slots=2)
CHAT1 = Server("chat-1", "llamafleet-chat-1", 8102, "chat", gpu=1, slots=2)
EMBED0 = Server("embed-0", "llamafleet-embed-0", 8201, "embed", gpu=0, slots=1)

HEALTHY = Observation(container="running", health="ok", started_at=-1000.0, latency_s=0.004)
HUNG = Observation(container="running", health="timeout", started_at=-1000.0, latency_s=2.0)
EXITED = Observation(container="exited", exit_code=137)


def run(sup: Supervisor, ticks, obs_at) -> list[tuple[float, str, str, str]]:
    """Step the supervisor at the given times; return (time, server, action, reason) of every action taken."""
    taken = []
    for now in ticks:
        for action in sup.step(now, obs_at(now)):
            sup.acted(action, now)
            taken.append((now, action.server, action.kind, action.reason))
    return taken


def test_backoff_sequence():
    # first action at once, then 2, 4, 8, 16, then capped at 30
    assert [backoff_s(POLICY, n) for n in range(8)] == [0, 2, 4, 8, 16, 30, 30, 30]


def test_loading_within_the_start_grace_is_not_a_failure():
    sup = Supervisor((CHAT0,), POLICY)
    # container started at t=0; it answers 503 Loading model for 50 s (grace is 60 s)
    taken = run(sup, range(50), lambda now: {"chat-0": Observation("running", "loading", started_at=0.0)})
    assert taken == [] and sup.states["chat-0"].phase == "starting" and sup.states["chat-0"].failures == 0


def test_loading_past_the_grace_is_healed():
    sup = Supervisor((CHAT0,), POLICY)
    # started at t=0, still loading at t=61, 62, 63: third failure at t=63 -> restart at once
    taken = run(sup, [61, 62, 63], lambda now: {"chat-0": Observation("running", "loading", started_at=0.0)})
    assert taken == [(63, "chat-0", "restart", "load_timeout")]


def test_a_busy_server_is_not_dead():
    # two slow checks in a row, then an answer: never three in a row, never an action
    pattern = [HUNG, HUNG, HEALTHY, HUNG, HUNG, HEALTHY, HUNG, HUNG, HEALTHY]
    sup = Supervisor((CHAT0,), POLICY)
    taken = run(sup, range(len(pattern)), lambda now: {"chat-0": pattern[now]})
    assert taken == [] and sup.states["chat-0"].phase == "healthy"


def test_hung_server_is_restarted_at_the_third_timeout():
    sup = Supervisor((CHAT0,), POLICY)
    taken = run(sup, [0, 1, 2], lambda now: {"chat-0": HUNG})
    assert taken == [(2, "chat-0", "restart", "hung")]
    events = [e for e in sup.take_events() if e.get("server") == "chat-0"]
    assert [e["event"] for e in events] == ["failed", "restart"]
    assert events[0]["ts"] == 2 and events[1]["since_detection_s"] == 0


@pytest.mark.parametrize("obs,kind,reason", [
    (EXITED, "restart", "exited"),
    (Observation(container="exited", exit_code=137, oom_killed=True), "restart", "oom_killed"),
    (Observation(container="dead"), "restart", "exited"),
    (Observation(container="paused", started_at=-1000.0), "unpause", "paused"),
    (Observation(container="running", health="error", detail="HTTP 500", started_at=-1000.0), "restart", "unhealthy"),
    (Observation(container="running", health="refused", started_at=-1000.0), "restart", "unhealthy"),
])
def test_container_states_and_their_action(obs, kind, reason):
    sup = Supervisor((CHAT0,), POLICY)
    assert run(sup, [0, 1, 2], lambda now: {"chat-0": obs}) == [(2, "chat-0", kind, reason)]


@pytest.mark.parametrize("container", ["missing", "unknown", "created", "restarting"])
def test_what_the_watchdog_cannot_heal_is_left_alone(container):
    sup = Supervisor((CHAT0,), POLICY)
    assert run(sup, range(10), lambda now: {"chat-0": Observation(container=container)}) == []
    events = sup.take_events()
    assert len(events) == 1 and events[0]["event"] == "not_healed"


def test_backoff_timeline_of_a_server_that_keeps_dying():
    # Always exited, a tick per second. Each failure needs 3 checks; the action waits for
    # last action + backoff(streak):
    #   failed at 2 -> action at 2 (streak 0: no wait)
    #   checks 3,4,5 -> failed at 5; last 2 + 2 = 4 -> action at 5
    #   checks 6,7,8 -> failed at 8; last 5 + 4 = 9 -> action at 9
    #   checks 10,11,12 -> failed at 12; last 9 + 8 = 17 -> action at 17
    #   checks 18,19,20 -> failed at 20; last 17 + 16 = 33 -> action at 33
    #   checks 34,35,36 -> failed at 36; last 33 + 30 (cap) = 63 -> action at 63
    sup = Supervisor((CHAT0,), POLICY)
    taken = run(sup, range(70), lambda now: {"chat-0": EXITED})
    assert [t for t, *_ in taken] == [2, 5, 9, 17, 33, 63]
    assert sup.states["chat-0"].restarts == {"exited": 6}


def test_backoff_resets_after_the_server_was_stable():
    sup = Supervisor((CHAT0,), POLICY)
    # dies at 0-2 (action at 2) and 3-5 (action at 5: streak 2), then healthy from t=6
    def obs(now):
        return {"chat-0": EXITED if now < 6 or 200 <= now < 203 else HEALTHY}
    taken = run(sup, list(range(106)) + [200, 201, 202], obs)
    # healthy from 6, stable at 106 (6 + 100): the streak is back to 0 and the failure at 202 is healed at once
    assert taken == [(2, "chat-0", "restart", "exited"), (5, "chat-0", "restart", "exited"),
                     (202, "chat-0", "restart", "exited")]


def test_without_the_reset_the_backoff_holds():
    sup = Supervisor((CHAT0,), POLICY)
    # actions at 2 and 5 (streak 2), healthy from 6 to 49 only (43 s < 100 s): the streak is kept.
    # Dies at 50: failed at 52, allowed at max(52, 5 + 4) = 52 -> action at 52, attempt 3, and the
    # next one would wait backoff(3) = 8 s
    def obs(now):
        return {"chat-0": EXITED if now < 6 or now >= 50 else HEALTHY}
    taken = run(sup, range(53), obs)
    assert [t for t, *_ in taken] == [2, 5, 52]
    assert sup.states["chat-0"].streak == 3 and sup.current_backoff_s("chat-0") == 8


def test_one_action_at_a_time_and_never_all():
    sup = Supervisor((CHAT0, CHAT1, EMBED0), POLICY)
    restarted_at: dict[str, float] = {}

    def obs(now):
        out = {}
        for name in ("chat-0", "chat-1", "embed-0"):
            if name == "embed-0":
                out[name] = HEALTHY
            elif name not in restarted_at:
                out[name] = EXITED
            elif now - restarted_at[name] < 4:       # after a restart: loading for 4 s, then healthy
                out[name] = Observation("running", "loading", started_at=restarted_at[name])
            else:
                out[name] = HEALTHY
        return out

    taken = []
    for now in range(20):
        actions = sup.step(now, obs(now))
        assert len(actions) <= 1
        for action in actions:
            assert not any(st.phase == "recovering" for st in sup.states.values())
            sup.acted(action, now)
            restarted_at[action.server] = now
            taken.append((now, action.server))
    # both chats fail at t=2; chat-0 (same detection time, first by name) is restarted at 2; it loads
    # until 6 and is healthy at 6; only then is chat-1 restarted (t=6); embed-0 is never touched
    assert taken == [(2, "chat-0"), (6, "chat-1")]


POOLS = "llamafleet-pools"
RUNNING = Observation(container="running", health="none", started_at=-1000.0)   # a kept container: no endpoint


def test_kept_containers_are_watched_from_the_label_and_forgotten_once_removed():
    sup = Supervisor((CHAT0,), POLICY)
    sup.keep([POOLS, "chat-0"], 0)      # a container may not take a server's name
    assert sorted(sup.servers) == ["chat-0", POOLS] and sup.servers[POOLS].port is None
    assert [(e["event"], e["server"]) for e in sup.take_events()] == [("watching", POOLS)]
    # docker kill at t=0: exited at 0, 1, 2 -> started again at 2 (the third failed check), like a server
    taken = run(sup, [0, 1, 2, 3], lambda now: {"chat-0": HEALTHY, POOLS: EXITED if now < 3 else RUNNING})
    assert taken == [(2, POOLS, "start", "exited")]
    assert sup.states[POOLS].phase == "healthy"
    sup.keep([], 4)                     # its role removed it: not missing, gone
    assert sorted(sup.servers) == ["chat-0"] and POOLS not in sup.states
    assert [e["event"] for e in sup.take_events()][-1] == "forgotten"


def test_a_kept_container_is_not_held_back_by_a_server_that_loads():
    sup = Supervisor((CHAT0,), POLICY)
    sup.keep([POOLS], 0)

    def obs(now):
        # chat-0 killed at 0, restarted at 2, loading for a minute; the pools killed at 4
        chat = EXITED if now < 3 else Observation("running", "loading", started_at=2.0)
        return {"chat-0": chat, POOLS: EXITED if 4 <= now < 8 else RUNNING}

    taken = run(sup, range(10), obs)
    assert taken == [(2, "chat-0", "restart", "exited"), (6, POOLS, "start", "exited")]
    assert sup.states["chat-0"].phase == "recovering"   # still loading when the pools were restarted


def test_kept_containers_have_their_own_up_metric():
    sup = Supervisor((CHAT0,), POLICY)
    sup.keep([POOLS], 0)
    run(sup, [0, 1, 2], lambda now: {"chat-0": HEALTHY, POOLS: EXITED})
    lines = set(render_metrics(sup, paused=False, gpus={}, xids={}, last_tick=1.0, tick_s=0.1).splitlines())
    assert 'llamafleet_watchdog_container_up{container="llamafleet-pools"} 0' in lines
    assert 'llamafleet_watchdog_up{server="chat-0",role="chat",container="llamafleet-chat-0"} 1' in lines
    assert not [line for line in lines if line.startswith("llamafleet_watchdog_up{") and POOLS in line]
    assert 'llamafleet_watchdog_restarts_total{server="llamafleet-pools",reason="exited"} 1' in lines


def test_the_oldest_failure_goes_first():
    sup = Supervisor((CHAT0, CHAT1), POLICY)
    # chat-1 dies at 0 (failed at 2), chat-0 dies at 1 (failed at 3); both still down at 3
    def obs(now):
        return {"chat-0": EXITED if now >= 1 else HEALTHY, "chat-1": EXITED}
    taken = run(sup, [0, 1, 2], obs)
    assert taken == [(2, "chat-1", "restart", "exited")]


def test_maintenance_flag_holds_the_server_and_failures_count_afresh():
    sup = Supervisor((CHAT0,), POLICY)
    def obs(now):
        return {"chat-0": Observation(container="exited", maintenance=now < 10)}
    taken = run(sup, range(13), obs)
    # held for t<10; from 10 three fresh failures: 10, 11, 12 -> action at 12
    assert taken == [(12, "chat-0", "restart", "exited")]
    assert [e["event"] for e in sup.take_events()][:2] == ["maintenance", "maintenance_over"]


def test_pause_file_holds_every_action():
    sup = Supervisor((CHAT0,), POLICY)
    sup.set_paused(True, 0)
    assert run(sup, range(10), lambda now: {"chat-0": EXITED}) == []
    assert sup.states["chat-0"].phase == "failed"
    sup.set_paused(False, 10)
    assert run(sup, [10], lambda now: {"chat-0": EXITED}) == [(10, "chat-0", "restart", "exited")]


def test_xid_on_a_gpu_restarts_its_servers_one_at_a_time():
    sup = Supervisor((CHAT0, CHAT1, EMBED0), POLICY)
    run(sup, [0], lambda now: {n: HEALTHY for n in ("chat-0", "chat-1", "embed-0")})
    sup.gpu_fault(0, "Xid 31: MMU Fault", 1)
    # /health still says ok, but the CUDA context on GPU 0 is gone: chat-0 at once; embed-0 once chat-0
    # is healthy again (its next check, at 2); chat-1 (GPU 1) untouched
    taken = run(sup, [1, 2, 3], lambda now: {n: HEALTHY for n in ("chat-0", "chat-1", "embed-0")})
    assert taken == [(1, "chat-0", "restart", "gpu_xid"), (2, "embed-0", "restart", "gpu_xid")]


def test_a_lost_gpu_is_reported_and_its_servers_left_alone():
    sup = Supervisor((CHAT0, CHAT1), POLICY)
    sup.set_gpu_lost({1: "Xid 79: GPU has fallen off the bus."}, 0)
    taken = run(sup, range(10), lambda now: {"chat-0": HEALTHY, "chat-1": HUNG})
    assert taken == [] and sup.states["chat-1"].phase == "gpu_lost"
    assert [e["event"] for e in sup.take_events()] == ["gpu_lost", "healthy", "not_healed"]


def test_a_failed_docker_call_counts_for_the_backoff():
    sup = Supervisor((CHAT0,), POLICY)
    action = run(sup, [0, 1], lambda now: {"chat-0": EXITED}) or sup.step(2, {"chat-0": EXITED})
    sup.acted(action[0], 2, error="docker: HTTP 500")
    # failed again at 2; the next try waits until 2 + backoff(1) = 4
    assert sup.step(3, {"chat-0": EXITED}) == []
    assert [a.server for a in sup.step(4, {"chat-0": EXITED})] == ["chat-0"]


def test_metrics_exposition():
    sup = Supervisor((CHAT0, EMBED0), POLICY)
    run(sup, [0, 1, 2], lambda now: {"chat-0": EXITED, "embed-0": HEALTHY})   # chat-0 restarted at 2
    text = render_metrics(sup, paused=False, gpus={0: True}, xids={(0, 31): 2}, last_tick=12.5, tick_s=0.25)
    lines = set(text.splitlines())
    assert 'llamafleet_watchdog_up{server="chat-0",role="chat",container="llamafleet-chat-0"} 0' in lines
    assert 'llamafleet_watchdog_up{server="embed-0",role="embed",container="llamafleet-embed-0"} 1' in lines
    assert 'llamafleet_watchdog_restarts_total{server="chat-0",reason="exited"} 1' in lines
    assert 'llamafleet_watchdog_restarts_total{server="chat-0",reason="hung"} 0' in lines
    assert 'llamafleet_watchdog_backoff_seconds{server="chat-0"} 2' in lines     # after one action: 2 s
    assert 'llamafleet_watchdog_backoff_seconds{server="embed-0"} 0' in lines
    assert 'llamafleet_watchdog_check_latency_seconds{server="embed-0"} 0.004' in lines
    assert 'llamafleet_watchdog_phase{server="chat-0",phase="recovering"} 1' in lines
    assert 'llamafleet_server_slots{server="chat-0",role="chat"} 2' in lines
    assert 'llamafleet_watchdog_gpu_xid_total{gpu="0",xid="31"} 2' in lines
    assert "llamafleet_watchdog_paused 0" in lines
    assert "# TYPE llamafleet_watchdog_restarts_total counter" in lines


def test_log_lines_are_one_json_object_each():
    line = log_line({"ts": 0.5, "event": "restart", "server": "chat-0", "reason": "exited"})
    assert "\n" not in line
    assert json.loads(line) == {"ts": "1970-01-01T00:00:00.500+00:00", "event": "restart", "server": "chat-0",
                                "reason": "exited", "epoch": 0.5}


# --- configuration ------------------------------------------------------------------------------

GOOD = {"servers": [{"name": "chat-0", "container": "llamafleet-chat-0", "port": 8101, "role": "chat", "slots": 2}],
        "policy": {"failures_before_action": 3}, "listen_port": 9391}


def test_config_loads():
    config = load_config(GOOD)
    assert isinstance(config, Config) and config.servers[0].port == 8101 and config.policy.failures_before_action == 3


@pytest.mark.parametrize("change,message", [
    ({"servers": []}, "servers must be a non-empty list"),
    ({"servers": [GOOD["servers"][0], dict(GOOD["servers"][0], port=8102)]}, "'chat-0' is used twice"),
    ({"servers": [GOOD["servers"][0], dict(GOOD["servers"][0], name="chat-1")]}, "port 8101 is used twice"),
    ({"servers": [dict(GOOD["servers"][0], role="judge")]}, "servers[0].role must be one of chat, embed"),
    ({"servers": [dict(GOOD["servers"][0], port="8101")]}, "servers[0].port must be an integer"),
    ({"policy": {"health_timeout_s": 0}}, "policy.health_timeout_s must be above 0"),
    ({"policy": {"xid_restart": [79]}}, "Xid [79] is in both"),
    ({"policy": {"restarts": 1}}, "policy: unknown keys ['restarts']"),
    ({"colour": "red"}, "unknown keys ['colour']"),
])
def test_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError) as err:
        load_config({**GOOD, **change})
    assert message in str(err.value)


def test_flag_files(tmp_path):
    flag = tmp_path / "pause"
    assert flag_set(str(flag), time.time(), 3600) is False
    flag.touch()
    assert flag_set(str(flag), time.time(), 3600) is True
    os.utime(flag, (time.time() - 7200, time.time() - 7200))
    assert flag_set(str(flag), time.time(), 3600) is None      # stale: ignored, so a forgotten flag cannot disable healing
    (tmp_path / "dir").mkdir()
    assert flag_set(str(tmp_path / "dir"), time.time(), 3600) is False


def test_docker_times():
    # Docker writes nanoseconds; 2026-11-27 13:25:22 UTC by calendar.timegm, plus the fraction
    assert parse_docker_time("2026-11-27T13:25:22.123456789Z") == pytest.approx(
        calendar.timegm((2026, 11, 27, 13, 25, 22)) + 0.123456789)
    assert parse_docker_time("0001-01-01T00:00:00Z") is None


# --- /health against a real HTTP server ---------------------------------------------------------

class _Health(http.server.BaseHTTPRequestHandler):
    mode = "ok"

    def do_GET(self):  # noqa: N802
        if self.mode == "slow":
            time.sleep(1.5)
        status, body = {"ok": (200, b'{"status":"ok"}'), "slow": (200, b'{"status":"ok"}'),
                        "loading": (503, b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'),
                        "broken": (500, b'{"error":"x"}')}[self.mode]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("mode,timeout,expected", [
    ("ok", 1.0, "ok"), ("loading", 1.0, "loading"), ("broken", 1.0, "error"),
    ("slow", 0.3, "timeout"),      # bounded: a 1.5 s answer with a 0.3 s timeout
    ("slow", 3.0, "ok"),           # a slow (busy) answer within the timeout is an answer
])
def test_check_health(health_server, mode, timeout, expected):
    _Health.mode = mode
    result, _, elapsed = check_health("127.0.0.1", health_server.server_address[1], timeout)
    assert result == expected
    if expected == "timeout":
        assert elapsed < 1.4


def test_check_health_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert check_health("127.0.0.1", port, 1.0)[0] == "refused"


# --- GPU: a stand-in nvidia-smi and a recorded kernel log -----------------------------------------

# Lines in the format of the NVIDIA driver's kernel messages, as in public reports (Xid 31 MMU fault
# with pid and name; Xid 79 "fallen off the bus"; Xid 45 preemptive cleanup), with this test's PCI
# addresses: 0000:01:00 is GPU 0 and 0000:02:00 is GPU 1 in the stand-in nvidia-smi below.
RECORDED_KERNEL_LOG = """\
[ 8123.101010] nvidia-modeset: WARNING: GPU:0: Unable to read EDID for display device DP-0
[ 9001.552233] NVRM: GPU at PCI:0000:02:00: GPU-5e0c3a9a-0000-4d1c-9d3e-6a1b7c2d9e11
[ 9001.552240] NVRM: Xid (PCI:0000:02:00): 31, pid=41234, name=llama-server, Ch 00000010, intr 00000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f29_5b8c9000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ
[ 9002.100000] NVRM: Xid (PCI:0000:02:00): 45, pid='<unknown>', name=<unknown>, Ch 00000010
[ 9500.000001] NVRM: Xid (PCI:0000:01:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
[ 9500.000002] NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.
"""

SMI_OK = "0, 00000000:01:00.0\n1, 00000000:02:00.0\n"


def test_parse_xid():
    lines = RECORDED_KERNEL_LOG.splitlines()
    assert parse_xid(lines[0]) is None and parse_xid(lines[1]) is None
    assert parse_xid(lines[2])[:2] == ((0, 2, 0), 31)
    assert parse_xid(lines[4])[:2] == ((0, 1, 0), 79)


@pytest.mark.parametrize("rc,stdout,stderr,lost", [
    (0, SMI_OK, "", set()),
    (0, "0, 00000000:01:00.0\n1, [GPU is lost]\n", "", {1}),
    (15, "", "Unable to determine the device handle for GPU0000:02:00.0: Unknown Error\n", {1}),
    (18, "", "Failed to initialize NVML: Driver/library version mismatch\n", {0, 1}),   # nothing named: every known GPU
])
def test_parse_nvidia_smi(rc, stdout, stderr, lost):
    known = {(0, 1, 0): 0, (0, 2, 0): 1}
    assert set(parse_nvidia_smi(rc, stdout, stderr, known).lost) == lost


def _stand_in_nvidia_smi(tmp_path) -> tuple[str, str]:
    """An executable nvidia-smi that prints what the test writes into a control file, and its exit code."""
    control = tmp_path / "smi-output"
    control.write_text("0\n" + SMI_OK)
    script = tmp_path / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nrc=$(head -n1 {control})\ntail -n +2 {control}\nexit $rc\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), str(control)


def test_gpu_monitor_with_a_stand_in_nvidia_smi_and_a_recorded_kernel_log(tmp_path):
    smi, control = _stand_in_nvidia_smi(tmp_path)
    kernel_log = tmp_path / "kern.log"
    kernel_log.write_text("[    0.000000] Linux version 6.1.0 (old lines are not read)\n"
                          "[    1.000000] NVRM: Xid (PCI:0000:02:00): 31, pid=1, name=old, Ch 00000001\n")
    config = Config(servers=(CHAT0, CHAT1, EMBED0), policy=POLICY, gpu_checks=True, nvidia_smi=smi,
                    kernel_log=str(kernel_log), gpu_interval_s=0.0)
    sup = Supervisor(config.servers, POLICY)
    monitor = GpuMonitor(config)
    monitor.poll(0, sup)
    assert monitor.gpus == {0: True, 1: True} and monitor.xids == {}
    run(sup, [0], lambda now: {n: HEALTHY for n in ("chat-0", "chat-1", "embed-0")})

    with kernel_log.open("a") as handle:      # the driver writes the recorded lines
        handle.write(RECORDED_KERNEL_LOG)
    monitor.poll(1, sup)
    # Xid 31 on 02:00 = GPU 1: chat-1 restarted; Xid 79 on 01:00 = GPU 0: lost, chat-0 and embed-0 left alone
    assert monitor.xids == {(1, 31): 1, (1, 45): 1, (0, 79): 1}
    assert monitor.gpus == {0: False, 1: True}
    taken = run(sup, [1, 2, 3, 4], lambda now: {n: HUNG if n != "chat-1" else HEALTHY for n in ("chat-0", "chat-1", "embed-0")})
    assert taken == [(1, "chat-1", "restart", "gpu_xid")]
    assert sup.states["chat-0"].phase == "gpu_lost" and sup.states["embed-0"].phase == "gpu_lost"

    # nvidia-smi itself starts failing: every GPU is reported lost
    with open(control, "w", encoding="utf-8") as handle:
        handle.write("18\nFailed to initialize NVML: Driver/library version mismatch\n")
    monitor.poll(5, sup)
    assert monitor.gpus == {0: False, 1: False}
    assert {e["event"] for e in sup.take_events()} >= {"gpu_fault", "gpu_lost", "not_healed"}


def test_kernel_log_rotation(tmp_path):
    smi, _ = _stand_in_nvidia_smi(tmp_path)
    kernel_log = tmp_path / "kern.log"
    kernel_log.write_text("")
    config = Config(servers=(CHAT1,), policy=POLICY, gpu_checks=True, nvidia_smi=smi, kernel_log=str(kernel_log))
    sup = Supervisor(config.servers, POLICY)
    monitor = GpuMonitor(config)
    monitor.poll(0, sup)
    kernel_log.rename(tmp_path / "kern.log.1")        # logrotate moves it away and a new file starts
    kernel_log.write_text("[ 1.0] NVRM: Xid (PCI:0000:02:00): 13, pid=7, name=llama-server, Graphics Exception\n")
    monitor.poll(1, sup)
    assert monitor.xids == {(1, 13): 1}
