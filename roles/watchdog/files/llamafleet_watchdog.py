"""llamafleet watchdog: keeps the llama-servers of one host alive, one restart at a time.

It also keeps running the fleet's other containers on the host (the gateway's LiteLLM instances, the
pools' HAProxy, Prometheus): each carries the label `llamafleet.keep-running`, and one that Docker's
restart policy left stopped (`docker kill`, a stop) is started again. Those are found by the label at
every tick, so the roles that own them need not tell the watchdog their names.

A small stdlib-only daemon (it runs as a container built by the watchdog role, with the host's
Docker socket). Every tick it observes each server (its container's state through the Docker API,
`GET /health` bounded by a timeout, and on CUDA hosts the GPUs through nvidia-smi and Xid lines of
the kernel log), lets the pure `Supervisor` decide, carries out at most one healing action
(restart, or unpause for a frozen container), logs every decision as one JSON line and serves its
state as Prometheus metrics.

The decision logic (`Supervisor`, `backoff_s`, `classify`) does no I/O and is unit-tested with
hand-computed expectations; everything that touches Docker, HTTP, processes or files is below it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import http.server
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import quote

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

ROLES = ("chat", "embed")
# The label of a container the watchdog keeps running by its state alone (no health endpoint): the
# gateway, pools and monitoring roles set it. Docker's restart policy brings back a crashed process,
# but not a container it was told to kill or stop; the watchdog does.
KEEP_RUNNING_LABEL = "llamafleet.keep-running"
KEPT_ROLE = "container"

# Xid codes (NVIDIA's Xid catalogue). An application-level fault leaves the server's CUDA context
# unusable while /health may still answer: restart the server. A GPU-level fault needs a GPU reset
# or a reboot: restarting the server cannot help and would turn a degraded server into a dead one,
# so the watchdog reports it and leaves the server alone. Xid 45 (preemptive cleanup) follows the
# end of a process, including the watchdog's own restarts, so it is in neither list.
DEFAULT_XID_RESTART = (13, 31, 43, 109)
DEFAULT_XID_GPU_LOST = (48, 61, 62, 74, 79, 95, 119, 120, 154)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is expected."""


@dataclass(frozen=True)
class Server:
    """A llama-server (checked by its container and /health), or a kept container (role KEPT_ROLE,
    port None: checked by its container's state only)."""

    name: str
    container: str
    port: int | None
    role: str
    address: str = "127.0.0.1"
    gpu: int | None = None
    slots: int | None = None


@dataclass(frozen=True)
class Policy:
    interval_s: float = 1.0
    health_timeout_s: float = 2.0
    failures_before_action: int = 3
    start_grace_s: float = 300.0
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    backoff_reset_s: float = 120.0
    restart_stop_timeout_s: int = 3
    maintenance_max_age_s: float = 3600.0
    xid_restart: tuple[int, ...] = DEFAULT_XID_RESTART
    xid_gpu_lost: tuple[int, ...] = DEFAULT_XID_GPU_LOST


@dataclass(frozen=True)
class Config:
    servers: tuple[Server, ...]
    policy: Policy
    listen_address: str = "127.0.0.1"
    listen_port: int = 9391
    state_dir: str = "/run/llamafleet/watchdog"
    docker_socket: str = "/var/run/docker.sock"
    gpu_checks: bool = False
    nvidia_smi: str = "nvidia-smi"
    kernel_log: str = "/dev/kmsg"
    gpu_interval_s: float = 5.0


def _number(value, key: str, *, integer: bool = False, minimum: float = 0.0):
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {value!r}")
    return value


def load_config(raw: dict) -> Config:
    """Validate the rendered configuration; every error names the key and the fix."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    known = {"servers", "policy", "listen_address", "listen_port", "state_dir", "docker_socket", "gpu_checks",
             "nvidia_smi", "kernel_log", "gpu_interval_s"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; known: {sorted(known)}")
    servers_raw = raw.get("servers")
    if not isinstance(servers_raw, list) or not servers_raw:
        raise ConfigError("servers must be a non-empty list (name, container, port, role per server)")
    servers, seen_names, seen_ports = [], set(), set()
    for i, item in enumerate(servers_raw):
        where = f"servers[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be an object")
        extra = sorted(set(item) - {"name", "container", "port", "role", "address", "gpu", "slots"})
        if extra:
            raise ConfigError(f"{where}: unknown keys {extra}")
        for key in ("name", "container", "role"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ConfigError(f"{where}.{key} must be a non-empty string")
        if item["role"] not in ROLES:
            raise ConfigError(f"{where}.role must be one of {', '.join(ROLES)}, got {item['role']!r}")
        port = _number(item.get("port"), f"{where}.port", integer=True, minimum=1)
        if port > 65535:
            raise ConfigError(f"{where}.port must be at most 65535, got {port}")
        gpu = item.get("gpu")
        if gpu is not None:
            _number(gpu, f"{where}.gpu", integer=True)
        slots = item.get("slots")
        if slots is not None:
            _number(slots, f"{where}.slots", integer=True, minimum=1)
        if item["name"] in seen_names:
            raise ConfigError(f"{where}.name {item['name']!r} is used twice; server names must be unique")
        if port in seen_ports:
            raise ConfigError(f"{where}.port {port} is used twice; every server has its own port")
        seen_names.add(item["name"])
        seen_ports.add(port)
        servers.append(Server(name=item["name"], container=item["container"], port=port, role=item["role"],
                              address=item.get("address", "127.0.0.1"), gpu=gpu, slots=slots))
    policy_raw = raw.get("policy", {})
    if not isinstance(policy_raw, dict):
        raise ConfigError("policy must be an object")
    fields = Policy.__dataclass_fields__
    extra = sorted(set(policy_raw) - set(fields))
    if extra:
        raise ConfigError(f"policy: unknown keys {extra}; known: {sorted(fields)}")
    policy_values = {}
    for key, value in policy_raw.items():
        if key in ("xid_restart", "xid_gpu_lost"):
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"policy.{key} must be a list of Xid numbers")
            policy_values[key] = tuple(value)
        elif key in ("failures_before_action", "restart_stop_timeout_s"):
            policy_values[key] = _number(value, f"policy.{key}", integer=True, minimum=1)
        else:
            policy_values[key] = _number(value, f"policy.{key}", minimum=0.01 if key == "interval_s" else 0.0)
    policy = Policy(**policy_values)
    if policy.health_timeout_s <= 0:
        raise ConfigError("policy.health_timeout_s must be above 0: an unbounded check would take a busy server for a dead one")
    if policy.backoff_max_s < policy.backoff_initial_s:
        raise ConfigError("policy.backoff_max_s must be at least policy.backoff_initial_s")
    both = sorted(set(policy.xid_restart) & set(policy.xid_gpu_lost))
    if both:
        raise ConfigError(f"Xid {both} is in both policy.xid_restart and policy.xid_gpu_lost; keep each in one list")
    kwargs = {}
    for key in ("listen_address", "state_dir", "docker_socket", "nvidia_smi", "kernel_log"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise ConfigError(f"{key} must be a non-empty string")
            kwargs[key] = raw[key]
    if "listen_port" in raw:
        kwargs["listen_port"] = _number(raw["listen_port"], "listen_port", integer=True, minimum=1)
    if "gpu_interval_s" in raw:
        kwargs["gpu_interval_s"] = _number(raw["gpu_interval_s"], "gpu_interval_s", minimum=0.1)
    if "gpu_checks" in raw:
        if not isinstance(raw["gpu_checks"], bool):
            raise ConfigError("gpu_checks must be true or false")
        kwargs["gpu_checks"] = raw["gpu_checks"]
    return Config(servers=tuple(servers), policy=policy, **kwargs)


# ---------------------------------------------------------------------------------------------
# Decisions (pure: no I/O, time passed in)
# ---------------------------------------------------------------------------------------------

@dataclass
class Observation:
    """What one tick saw of one server. `container` is Docker's state, or missing / unknown."""

    container: str                      # running, paused, exited, dead, restarting, created, missing, unknown
    health: str = "skipped"             # ok, loading, refused, timeout, error, skipped; none: no endpoint
    detail: str = ""
    latency_s: float | None = None
    started_at: float | None = None     # epoch seconds of the container's last start
    exit_code: int | None = None
    oom_killed: bool = False
    maintenance: bool = False


@dataclass(frozen=True)
class Action:
    server: str
    kind: str       # restart (a server), start (a kept container) or unpause
    reason: str
    detail: str


@dataclass
class ServerState:
    phase: str = "new"
    failures: int = 0
    reason: str = ""
    detail: str = ""
    failed_since: float | None = None
    streak: int = 0                     # actions since the server was last stable (drives the backoff)
    last_action_at: float | None = None
    healthy_since: float | None = None
    gpu_fault: str = ""                 # a restart-worthy Xid seen on this server's GPU, not yet acted on
    restarts: dict[str, int] = field(default_factory=dict)
    latency_s: float | None = None
    container: str = "unknown"


# Phases where the server answers: it counts as up.
UP_PHASES = ("new", "healthy",)


def backoff_s(policy: Policy, streak: int) -> float:
    """Delay before the next action, after `streak` actions without the server becoming stable.

    The first action is immediate; then initial, 2x initial, ... capped at backoff_max_s.
    """
    if streak <= 0:
        return 0.0
    return min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (streak - 1))


def classify(policy: Policy, obs: Observation, now: float) -> tuple[str, str]:
    """(verdict, reason) of one observation: ok, starting, fail, or a state the watchdog cannot heal.

    Verdicts: ok, starting (loading within the start grace), fail (counts towards an action),
    maintenance, missing, unknown, docker_restarting (Docker's own restart policy is acting).
    """
    if obs.maintenance:
        return "maintenance", "maintenance"
    if obs.container in ("missing", "unknown", "created"):
        # no container to act on (or Docker cannot be asked): whoever creates it owns it
        return obs.container, obs.container
    if obs.container == "restarting":
        return "docker_restarting", "restarting"
    if obs.container in ("exited", "dead"):
        return "fail", "oom_killed" if obs.oom_killed else "exited"
    if obs.container == "paused":
        return "fail", "paused"
    in_grace = obs.started_at is not None and now - obs.started_at <= policy.start_grace_s
    if obs.health in ("ok", "none"):
        return "ok", ""
    if obs.health in ("loading", "refused"):
        # llama-server answers 503 "Loading model" while it loads; the port opens a moment after start
        return ("starting", "") if in_grace else ("fail", "load_timeout" if obs.health == "loading" else "unhealthy")
    if obs.health == "timeout":
        return "fail", "hung"
    return "fail", "unhealthy"


class Supervisor:
    """The state machine of every server of one host and the rule of one action at a time."""

    def __init__(self, servers: tuple[Server, ...], policy: Policy):
        self.servers = {s.name: s for s in servers}
        self.policy = policy
        self.states = {s.name: ServerState() for s in servers}
        self.events: list[dict] = []
        self.paused = False
        self.gpu_lost: dict[int, str] = {}

    def _event(self, event: str, now: float, **fields) -> None:
        self.events.append({"ts": now, "event": event, **fields})

    def keep(self, containers: list[str], now: float) -> None:
        """The kept containers seen this tick: a new one is watched from now on, one that was removed is
        forgotten (removing a container is how its role retires it, so it is not missing)."""
        kept = {name for name, s in self.servers.items() if s.role == KEPT_ROLE}
        for name in sorted(set(containers) - kept):
            if name in self.servers:
                continue    # a server's name, which a container name cannot take over
            self.servers[name] = Server(name=name, container=name, port=None, role=KEPT_ROLE)
            self.states[name] = ServerState()
            self._event("watching", now, server=name, reason=f"label {KEEP_RUNNING_LABEL}")
        for name in sorted(kept - set(containers)):
            del self.servers[name], self.states[name]
            self._event("forgotten", now, server=name, reason="container removed")

    def take_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    def gpu_fault(self, gpu: int, detail: str, now: float) -> None:
        """An application-level Xid on `gpu`: its servers are failed at once, whatever /health says."""
        for name, server in self.servers.items():
            if server.gpu == gpu and self.states[name].phase != "maintenance":
                self.states[name].gpu_fault = detail
                self._event("gpu_fault", now, server=name, gpu=gpu, reason="gpu_xid", detail=detail)

    def set_gpu_lost(self, lost: dict[int, str], now: float) -> None:
        for gpu in sorted(set(lost) - set(self.gpu_lost)):
            self._event("gpu_lost", now, gpu=gpu, reason="gpu_lost", detail=lost[gpu],
                        action="none: a GPU reset or a reboot is needed; its servers are left alone")
        for gpu in sorted(set(self.gpu_lost) - set(lost)):
            self._event("gpu_back", now, gpu=gpu)
        self.gpu_lost = dict(lost)

    def set_paused(self, paused: bool, now: float) -> None:
        if paused != self.paused:
            self._event("paused" if paused else "resumed", now, reason="pause file")
        self.paused = paused

    def _observe(self, name: str, obs: Observation, now: float) -> None:
        st, policy = self.states[name], self.policy
        st.latency_s, st.container = obs.latency_s, obs.container
        verdict, reason = classify(policy, obs, now)
        server = self.servers[name]
        if verdict == "maintenance":
            if st.phase != "maintenance":
                self._event("maintenance", now, server=name, reason="maintenance flag set: not healed")
            st.phase, st.failures, st.failed_since, st.gpu_fault = "maintenance", 0, None, ""
            return
        if st.phase == "maintenance":
            self._event("maintenance_over", now, server=name)
            st.phase = "new"
        if server.gpu is not None and server.gpu in self.gpu_lost:
            if st.phase != "gpu_lost":
                self._event("not_healed", now, server=name, reason="gpu_lost", detail=self.gpu_lost[server.gpu])
            st.phase, st.failures, st.failed_since = "gpu_lost", 0, None
            return
        if st.gpu_fault and verdict in ("ok", "starting", "fail"):
            verdict, reason = "fail", "gpu_xid"
        if verdict in ("missing", "unknown", "created", "docker_restarting"):
            if st.phase != verdict:
                self._event("not_healed", now, server=name, reason=reason, detail=obs.detail)
            st.phase, st.failures, st.failed_since = verdict, 0, None
            return
        if verdict == "ok":
            if st.phase != "healthy":
                fields = {}
                if st.phase == "recovering" and st.last_action_at is not None:
                    fields["since_action_s"] = round(now - st.last_action_at, 3)
                self._event("healthy", now, server=name, previous=st.phase, **fields)
                st.healthy_since = now
            st.phase, st.failures, st.failed_since, st.reason = "healthy", 0, None, ""
            if st.streak and st.healthy_since is not None and now - st.healthy_since >= policy.backoff_reset_s:
                st.streak = 0   # stable again: the next failure is healed at once
            return
        if verdict == "starting":
            if st.phase not in ("recovering", "starting"):
                st.phase = "starting"
            st.failures = 0
            return
        # fail
        st.failures += 1
        st.reason, st.detail = reason, obs.detail
        st.healthy_since = None
        immediate = reason == "gpu_xid"
        if st.phase == "failed":
            return
        if st.failures >= policy.failures_before_action or immediate:
            st.phase, st.failed_since = "failed", now
            self._event("failed", now, server=name, reason=reason, detail=obs.detail or st.gpu_fault,
                        failures=st.failures, container=obs.container)
        elif st.phase != "recovering":
            st.phase = "failing"

    def step(self, now: float, observations: dict[str, Observation]) -> list[Action]:
        """Update every server from this tick's observations; return the actions to take now (at most one
        on a llama-server and one on a kept container)."""
        for name in self.servers:
            self._observe(name, observations.get(name, Observation(container="unknown", detail="not observed")), now)
        for name, st in self.states.items():
            if st.phase == "recovering" and st.last_action_at is not None \
                    and now - st.last_action_at > self.policy.start_grace_s:
                st.phase, st.failed_since, st.reason = "failed", now, "no_recovery"
                self._event("failed", now, server=name, reason="no_recovery",
                            detail=f"not healthy {self.policy.start_grace_s:g} s after the action")
        if self.paused:
            return []
        actions = []
        # One action at a time among the llama-servers, and one among the kept containers: a server that
        # takes minutes to load its model must not hold back the gateway's restart, nor the reverse.
        for kept in (False, True):
            names = [name for name, s in self.servers.items() if (s.role == KEPT_ROLE) == kept]
            if any(self.states[name].phase == "recovering" for name in names):
                continue    # wait until the last action of this group has settled
            candidates = [(self.states[name].failed_since, name) for name in names
                          if self.states[name].phase == "failed" and now >= self.next_action_at(name)]
            if candidates:
                _since, name = min(candidates)
                st = self.states[name]
                # a kept container is stopped, so start it: a second start of a running one is a no-op
                kind = "unpause" if st.container == "paused" else "start" if kept else "restart"
                actions.append(Action(server=name, kind=kind, reason=st.reason, detail=st.detail or st.gpu_fault))
        return actions

    def next_action_at(self, name: str) -> float:
        st = self.states[name]
        if st.last_action_at is None:
            return st.failed_since or 0.0
        return max(st.failed_since or 0.0, st.last_action_at + backoff_s(self.policy, st.streak))

    def acted(self, action: Action, now: float, error: str = "") -> None:
        """Record an action carried out at `now` (error: why it failed, empty when it worked)."""
        st = self.states[action.server]
        st.streak += 1
        st.last_action_at = now
        st.restarts[action.reason] = st.restarts.get(action.reason, 0) + 1
        st.gpu_fault = ""
        fields = {"server": action.server, "action": action.kind, "reason": action.reason, "detail": action.detail,
                  "attempt": st.streak, "next_backoff_s": backoff_s(self.policy, st.streak)}
        if st.failed_since is not None:
            fields["since_detection_s"] = round(now - st.failed_since, 3)
        if error:
            self._event("action_failed", now, error=error, **fields)
            st.phase, st.failed_since = "failed", now
        else:
            self._event(action.kind, now, **fields)
            st.phase, st.failures, st.failed_since = "recovering", 0, None

    def current_backoff_s(self, name: str) -> float:
        return backoff_s(self.policy, self.states[name].streak)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

PHASES = ("new", "healthy", "starting", "failing", "failed", "recovering", "maintenance", "gpu_lost", "missing",
          "unknown", "created", "docker_restarting")
REASONS = ("exited", "oom_killed", "paused", "hung", "unhealthy", "load_timeout", "gpu_xid", "no_recovery")


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(sup: Supervisor, *, paused: bool, gpus: dict[int, bool], xids: dict[tuple[int, int], int],
                   last_tick: float, tick_s: float) -> str:
    """Prometheus text exposition (version 0.0.4) of the supervisor's state."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

    servers = sorted(sup.servers.values(), key=lambda s: s.name)

    def ident(s: Server) -> dict:
        return {"server": s.name, "role": s.role, "container": s.container}

    family("llamafleet_watchdog_up", "gauge", "1 when the server's /health answered 200 at the last check.",
           [(ident(s), 1.0 if sup.states[s.name].phase in UP_PHASES else 0.0) for s in servers if s.role != KEPT_ROLE])
    family("llamafleet_watchdog_container_up", "gauge",
           f"1 when a container labelled {KEEP_RUNNING_LABEL} was running at the last check.",
           [({"container": s.container}, 1.0 if sup.states[s.name].phase in UP_PHASES else 0.0)
            for s in servers if s.role == KEPT_ROLE])
    family("llamafleet_watchdog_phase", "gauge", "The server's phase in the watchdog's state machine (1 for the current one).",
           [({"server": s.name, "phase": p}, 1.0 if sup.states[s.name].phase == p else 0.0) for s in servers for p in PHASES])
    family("llamafleet_watchdog_restarts_total", "counter",
           "Healing actions (restart, or unpause for a frozen container) by reason.",
           [({"server": s.name, "reason": r}, float(sup.states[s.name].restarts.get(r, 0))) for s in servers for r in REASONS])
    family("llamafleet_watchdog_check_latency_seconds", "gauge", "Duration of the last /health check (the timeout when it timed out).",
           [({"server": s.name}, sup.states[s.name].latency_s) for s in servers if sup.states[s.name].latency_s is not None])
    family("llamafleet_watchdog_consecutive_failures", "gauge", "Failed checks in a row.",
           [({"server": s.name}, float(sup.states[s.name].failures)) for s in servers])
    family("llamafleet_watchdog_backoff_seconds", "gauge", "Delay the next action on this server waits after the last one.",
           [({"server": s.name}, sup.current_backoff_s(s.name)) for s in servers])
    family("llamafleet_server_slots", "gauge", "Slots (parallel sequences) the server was declared with.",
           [({"server": s.name, "role": s.role}, float(s.slots)) for s in servers if s.slots is not None])
    family("llamafleet_watchdog_paused", "gauge", "1 while the pause file holds every action.", [({}, 1.0 if paused else 0.0)])
    if gpus:
        family("llamafleet_watchdog_gpu_up", "gauge", "0 when nvidia-smi or an Xid says the GPU needs a reset.",
               [({"gpu": g}, 1.0 if ok else 0.0) for g, ok in sorted(gpus.items())])
    family("llamafleet_watchdog_gpu_xid_total", "counter", "Xid lines seen in the kernel log, by GPU and code.",
           [({"gpu": g, "xid": x}, float(n)) for (g, x), n in sorted(xids.items())])
    family("llamafleet_watchdog_last_tick_timestamp_seconds", "gauge", "End of the last completed tick.", [({}, last_tick)])
    family("llamafleet_watchdog_tick_seconds", "gauge", "Duration of the last tick.", [({}, tick_s)])
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# GPU health: nvidia-smi and the kernel log
# ---------------------------------------------------------------------------------------------

XID_RE = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\): (\d+),\s*(.*)")
SMI_HANDLE_RE = re.compile(r"GPU ?([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)\.\d+")


def bus_key(domain: str, bus: str, device: str) -> tuple[int, int, int]:
    """One key for a PCI address however it is written (Xid: 0000:01:00; nvidia-smi: 00000000:01:00.0)."""
    return int(domain, 16), int(bus, 16), int(device, 16)


def parse_xid(line: str) -> tuple[tuple[int, int, int], int, str] | None:
    match = XID_RE.search(line)
    if not match:
        return None
    return bus_key(*match.group(1, 2, 3)), int(match.group(4)), match.group(5).strip()


@dataclass
class SmiResult:
    buses: dict[tuple[int, int, int], int]      # PCI address -> GPU index
    lost: dict[int, str]                        # GPU index -> why it is considered lost
    error: str = ""                             # nvidia-smi itself failed


def parse_nvidia_smi(returncode: int, stdout: str, stderr: str, known: dict[tuple[int, int, int], int]) -> SmiResult:
    """Read `nvidia-smi --query-gpu=index,pci.bus_id --format=csv,noheader`.

    A GPU answering `[GPU is lost]`, `ERR!` or "Unable to determine the device handle" is lost; a
    failing nvidia-smi with no GPU named (NVML cannot initialise) reports every known GPU lost.
    """
    buses, lost = {}, {}
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            index = int(parts[0])
            m = re.match(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)", parts[1])
            if m:
                buses[bus_key(*m.group(1, 2, 3))] = index
            if any("ERR!" in p or "GPU is lost" in p or "Unknown Error" in p for p in parts[1:]):
                lost[index] = f"nvidia-smi: {line.strip()}"
    all_known = {**known, **buses}
    for line in (stdout + "\n" + stderr).splitlines():
        if "Unable to determine the device handle" in line or "GPU is lost" in line:
            m = SMI_HANDLE_RE.search(line)
            if m and bus_key(*m.group(1, 2, 3)) in all_known:
                lost[all_known[bus_key(*m.group(1, 2, 3))]] = f"nvidia-smi: {line.strip()}"
    error = ""
    if returncode != 0:
        error = (stderr.strip() or stdout.strip() or f"exit code {returncode}").splitlines()[-1]
        if not lost:
            lost = {index: f"nvidia-smi failed: {error}" for index in set(all_known.values())}
    return SmiResult(buses=buses, lost=lost, error=error)


class KernelLog:
    """Follows the kernel log from where it was when the watchdog started (only new lines count).

    `/dev/kmsg` is read record by record (needs CAP_SYSLOG where dmesg is restricted); any other
    path is followed as a text file (kern.log, or a recorded log in the tests), reopened when it
    is rotated or truncated.
    """

    def __init__(self, path: str):
        self.path = path
        self.handle = None
        self.kmsg = path == "/dev/kmsg"
        self.inode = None
        self.buffer = ""

    def _open(self, at_end: bool) -> None:
        if self.kmsg:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(fd, 0, os.SEEK_END)
            self.handle = fd
            return
        self.handle = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115 (kept open while following)
        self.inode = os.fstat(self.handle.fileno()).st_ino
        if at_end:
            self.handle.seek(0, os.SEEK_END)

    def lines(self) -> list[str]:
        try:
            if self.handle is None:
                self._open(at_end=True)
                return []
            if self.kmsg:
                out = []
                while True:
                    try:
                        record = os.read(self.handle, 8192).decode("utf-8", "replace")
                    except BlockingIOError:
                        return out
                    except OSError:      # EPIPE: records were overwritten; carry on with the next one
                        continue
                    out.append(record.split(";", 1)[-1].rstrip("\n"))
            st = os.stat(self.path)
            if st.st_ino != self.inode or st.st_size < self.handle.tell():
                self.handle.close()
                self._open(at_end=False)
            self.buffer += self.handle.read()
            *complete, self.buffer = self.buffer.split("\n")
            return complete
        except OSError:
            self.handle = None if not self.kmsg else self.handle
            return []


class GpuMonitor:
    """GPU health of the host: nvidia-smi every gpu_interval_s, the kernel log every tick."""

    def __init__(self, config: Config, run=subprocess.run):
        self.config, self.run = config, run
        self.log = KernelLog(config.kernel_log)
        self.buses: dict[tuple[int, int, int], int] = {}
        self.smi_lost: dict[int, str] = {}
        self.xid_lost: dict[int, str] = {}     # sticky until the watchdog restarts (after the GPU reset)
        self.xids: dict[tuple[int, int], int] = {}
        self.gpus: dict[int, bool] = {}
        self.last_smi = float("-inf")
        self.log.lines()  # position at the current end

    def poll(self, now: float, sup: Supervisor) -> None:
        if now - self.last_smi >= self.config.gpu_interval_s:
            self.last_smi = now
            try:
                proc = self.run([self.config.nvidia_smi, "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10, check=False)
                result = parse_nvidia_smi(proc.returncode, proc.stdout, proc.stderr, self.buses)
            except (OSError, subprocess.TimeoutExpired) as err:
                result = parse_nvidia_smi(1, "", f"nvidia-smi: {err}", self.buses)
            self.buses.update(result.buses)
            self.smi_lost = result.lost
        for line in self.log.lines():
            parsed = parse_xid(line)
            if parsed is None:
                continue
            bus, xid, text = parsed
            gpu = self.buses.get(bus)
            detail = f"Xid {xid}: {text}"[:200]
            if gpu is None:
                sup._event("xid_unknown_gpu", now, detail=line.strip()[:200])
                continue
            self.xids[(gpu, xid)] = self.xids.get((gpu, xid), 0) + 1
            if xid in self.config.policy.xid_gpu_lost:
                self.xid_lost[gpu] = detail
            elif xid in self.config.policy.xid_restart:
                sup.gpu_fault(gpu, detail, now)
            else:
                sup._event("xid", now, gpu=gpu, detail=detail, action="none (not in xid_restart or xid_gpu_lost)")
        lost = {**self.smi_lost, **self.xid_lost}
        sup.set_gpu_lost(lost, now)
        self.gpus = {g: g not in lost for g in sorted(set(self.buses.values()) | set(lost))}


# ---------------------------------------------------------------------------------------------
# Docker and HTTP
# ---------------------------------------------------------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


class Docker:
    """The few Docker Engine API calls the watchdog needs, over the Unix socket."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def _call(self, method: str, path: str, timeout: float) -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def inspect(self, container: str) -> Observation:
        try:
            status, body = self._call("GET", f"/containers/{quote(container)}/json", 5)
        except OSError as err:
            return Observation(container="unknown", detail=f"docker: {err}")
        if status == 404:
            return Observation(container="missing", detail=f"no container {container}")
        if status != 200:
            return Observation(container="unknown", detail=f"docker: HTTP {status}")
        state = json.loads(body)["State"]
        return Observation(container=state.get("Status", "unknown"), started_at=parse_docker_time(state.get("StartedAt")),
                           exit_code=state.get("ExitCode"), oom_killed=bool(state.get("OOMKilled")),
                           detail=f"exit code {state.get('ExitCode')}" if state.get("Status") in ("exited", "dead") else "")

    def kept(self) -> list[str] | None:
        """The names of every container labelled KEEP_RUNNING_LABEL=true, running or not; None when
        Docker cannot be asked (the watched set then stays as it was)."""
        filters = quote(json.dumps({"label": [f"{KEEP_RUNNING_LABEL}=true"]}))
        try:
            status, body = self._call("GET", f"/containers/json?all=1&filters={filters}", 5)
        except OSError:
            return None
        if status != 200:
            return None
        return [(item.get("Names") or ["/"])[0].lstrip("/") for item in json.loads(body)]

    def act(self, container: str, kind: str, stop_timeout_s: int) -> str:
        """Restart, start or unpause; returns an error text, empty when Docker accepted it."""
        path = f"/containers/{quote(container)}/restart?t={stop_timeout_s}" if kind == "restart" \
            else f"/containers/{quote(container)}/{kind}"
        try:
            status, body = self._call("POST", path, stop_timeout_s + 30)
        except OSError as err:
            return f"docker: {err}"
        if status in (200, 204) or (kind == "start" and status == 304):   # 304: already started
            return ""
        return f"docker: HTTP {status} {body[:200].decode('utf-8', 'replace')}"


def parse_docker_time(text: str | None) -> float | None:
    """Docker's RFC 3339 times carry nanoseconds, which fromisoformat (3.11) does not read."""
    if not text or text.startswith("0001-"):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not match:
        return None
    base = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) == "Z" else match.group(3)))
    return base.timestamp() + float(match.group(2) or 0)


def check_health(address: str, port: int, timeout_s: float) -> tuple[str, str, float]:
    """GET /health with a bounded timeout: (ok|loading|refused|timeout|error, detail, seconds)."""
    start = time.monotonic()
    conn = http.client.HTTPConnection(address, port, timeout=timeout_s)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        body = resp.read(512).decode("utf-8", "replace")
        elapsed = time.monotonic() - start
        if resp.status == 200:
            return "ok", "", elapsed
        if resp.status == 503 and "loading" in body.lower():
            return "loading", "503 Loading model", elapsed
        return "error", f"HTTP {resp.status} {body[:120]}", elapsed
    except ConnectionRefusedError:
        return "refused", "connection refused", time.monotonic() - start
    except TimeoutError:
        return "timeout", f"no answer within {timeout_s:g} s", time.monotonic() - start
    except (OSError, http.client.HTTPException) as err:
        return "error", f"{type(err).__name__}: {err}", time.monotonic() - start
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Flags set by operators and by the rolling restart
# ---------------------------------------------------------------------------------------------

def flag_set(path: str, now: float, max_age_s: float) -> bool | None:
    """True when the flag file exists and is fresh; None when it exists but is stale (ignored)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    return True if now - st.st_mtime <= max_age_s else None


# ---------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------

def log_line(event: dict) -> str:
    ts = datetime.fromtimestamp(event["ts"], tz=UTC).isoformat(timespec="milliseconds")
    return json.dumps({**event, "ts": ts, "epoch": round(event["ts"], 3)}, sort_keys=False)


class Watchdog:
    def __init__(self, config: Config, out=sys.stdout):
        self.config = config
        self.out = out
        self.sup = Supervisor(config.servers, config.policy)
        self.docker = Docker(config.docker_socket)
        self.gpu = GpuMonitor(config) if config.gpu_checks else None
        self.stale_flags: set[str] = set()
        self.last_tick = 0.0
        self.tick_s = 0.0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, len(config.servers)))

    def emit(self, event: dict) -> None:
        self.out.write(log_line(event) + "\n")
        self.out.flush()

    def _flag(self, name: str, now: float) -> bool:
        path = os.path.join(self.config.state_dir, name)
        state = flag_set(path, now, self.config.policy.maintenance_max_age_s)
        if state is None:
            if path not in self.stale_flags:
                self.stale_flags.add(path)
                self.emit({"ts": now, "event": "flag_ignored", "path": path,
                           "reason": f"older than {self.config.policy.maintenance_max_age_s:g} s; touch it again to renew"})
            return False
        self.stale_flags.discard(path)
        return state

    def observe(self, server: Server, now: float) -> Observation:
        obs = self.docker.inspect(server.container)
        obs.maintenance = self._flag(os.path.join("maintenance", server.name), now)
        if server.port is None:
            obs.health = "none"
        elif obs.container == "running" and not obs.maintenance:
            obs.health, detail, obs.latency_s = check_health(server.address, server.port, self.config.policy.health_timeout_s)
            obs.detail = detail or obs.detail
        return obs

    def tick(self) -> None:
        start = time.time()
        with self.lock:
            self.sup.set_paused(self._flag("pause", start), start)
            if self.gpu is not None:
                self.gpu.poll(start, self.sup)
        kept = self.docker.kept()
        with self.lock:
            if kept is not None:
                self.sup.keep(kept, start)
            watched = list(self.sup.servers.values())
        futures = {s.name: self.pool.submit(self.observe, s, start) for s in watched}
        observations = {name: f.result() for name, f in futures.items()}
        now = time.time()
        with self.lock:
            actions = self.sup.step(now, observations)
        for event in self.sup.take_events():
            self.emit(event)
        for action in actions:
            server = self.sup.servers[action.server]
            error = self.docker.act(server.container, action.kind, self.config.policy.restart_stop_timeout_s)
            with self.lock:
                self.sup.acted(action, time.time(), error)
            for event in self.sup.take_events():
                self.emit(event)
        with self.lock:
            self.last_tick = time.time()
            self.tick_s = self.last_tick - start

    def metrics(self) -> str:
        with self.lock:
            gpus = self.gpu.gpus if self.gpu else {}
            xids = dict(self.gpu.xids) if self.gpu else {}
            return render_metrics(self.sup, paused=self.sup.paused, gpus=gpus, xids=xids,
                                  last_tick=self.last_tick, tick_s=self.tick_s)

    def alive(self) -> bool:
        """The loop has completed a tick recently (a stuck loop makes the container unhealthy)."""
        p = self.config.policy
        limit = 10 * p.interval_s + 2 * p.health_timeout_s + p.restart_stop_timeout_s + 35
        return time.time() - self.last_tick <= limit

    def run(self) -> None:
        self.emit({"ts": time.time(), "event": "start", "servers": [s.name for s in self.config.servers],
                   "keep_only": not self.config.servers,
                   "gpu_checks": self.config.gpu_checks, "policy": self.config.policy.__dict__})
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception as err:  # noqa: BLE001 (one bad tick is logged, the next one retries)
                self.emit({"ts": time.time(), "event": "tick_error", "error": f"{type(err).__name__}: {err}"})
            self.stop.wait(max(0.0, self.config.policy.interval_s - (time.monotonic() - started)))


def serve(watchdog: Watchdog) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                body, status, ctype = watchdog.metrics().encode(), 200, "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                ok = watchdog.alive()
                body, status, ctype = (b"ok\n" if ok else b"stale\n"), (200 if ok else 503), "text/plain"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes are not events
            pass

    server = http.server.ThreadingHTTPServer((watchdog.config.listen_address, watchdog.config.listen_port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llamafleet watchdog")
    parser.add_argument("--config", required=True)
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--keep-only", action="store_true",
                        help="the keeper: keep the labelled containers running (the watchdog's own among them), "
                             "leave the servers, the GPUs and the metrics port to the watchdog")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = load_config(json.load(handle))
    except (OSError, json.JSONDecodeError, ConfigError) as err:
        print(f"watchdog: {args.config}: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"watchdog: {args.config}: {len(config.servers)} servers, configuration valid")
        return 0
    if args.keep_only:
        # Two processes keep each other running: a `docker kill` of either is undone by the other. Their
        # actions on a kept container are starts, so both acting on the same one is harmless.
        config = replace(config, servers=(), gpu_checks=False)
    watchdog = Watchdog(config)
    server = None if args.keep_only else serve(watchdog)
    signal.signal(signal.SIGTERM, lambda *_: watchdog.stop.set())
    try:
        watchdog.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
