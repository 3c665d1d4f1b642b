# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gateway and its pools: validated model groups, one pool per group spanning every host.

A model group is every server, on any host of the fleet, of one model and one role (the chat
servers of model X, the embedding servers of model Y). The gateway (LiteLLM) exposes each group
under an alias; the alias's pool (an HAProxy backend) holds all of the group's servers, each
limited to its slots, so that a request waits in one queue for the first free slot anywhere.

Everything here is pure: hosts' normalized servers in, the pools or a GatewayError listing every
problem (naming the variable and the fix) out. The preflight runs it before any host is touched.
"""
from __future__ import annotations

import hashlib
import math
import re

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import ROLES, api_key_problem
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import effective

ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ENTRY_KEYS = {"alias", "model", "role", "port", "fallbacks", "requests_per_minute", "prompt_tokens", "reply_tokens",
              "routing", "max_queue"}
# Requests a pool queues per slot before it sheds more with 429 and Retry-After (graceful overload):
# a bounded queue keeps every queued request's wait to a few replies' time, and the fleet serves
# normally soon after a burst, instead of each extra request waiting out the queue timeout.
QUEUE_PER_SLOT = 4
# How a pool picks a server (docs/gateway.md, "Conversation-affine routing"):
# leastconn: the least-loaded server with a free slot, else the pool's one queue.
# affine: a request carrying the conversation header goes to the server its key hashes to while that
#   server is up, not drained and has a free slot; otherwise exactly as leastconn. Not the default:
#   in the lab's measurement (docs/gateway.md) it did not beat leastconn; a chat group opts in.
ROUTINGS = ("affine", "leastconn")
DEFAULT_ROUTING = "leastconn"
# The key a conversation-affine pool routes on (roles/gateway_pools: gateway_pools_conversation_header);
# the bench sends it.
CONVERSATION_HEADER = "X-Llamafleet-Conversation"
# Hash buckets of a conversation key (xxh32 mod AFFINITY_BUCKETS); each bucket belongs to one server by
# rendezvous hashing, so adding or removing a server moves only the buckets it gains or loses.
AFFINITY_BUCKETS = 64
LOOPBACK = ("127.", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")
# Connections a server must still accept while all its slots are busy: the pool's health check
# and one probe (watchdog or operator). llama-server's own default is parallel + 2 for the same reason.
HTTP_THREADS_SPARE = 2
DEFAULT_PORT = 4000
DEFAULT_STATS_PORT = 8404
# LiteLLM processes behind the gateway's port (the pools' HAProxy fronts them and retries a request
# that one of them dropped on another): with two, a crashed LiteLLM (8 s to start again) fails no request.
DEFAULT_INSTANCES = 2
MAX_INSTANCES = 8
# Resident memory on the gateway host, counted in its host plan when it is also a fleet host. Measured
# on the lab (2026-12-02, LiteLLM 1.81.16 with 2 aliases, docker stats): one LiteLLM process 264 MiB
# after 60 requests (274 MiB RSS by docker top), 301 MiB at its peak under 7.5 requests/s
# (test_overload), rounded up; the pools' HAProxy 6.3 MiB idle, 8 MiB at that peak.
LITELLM_MIB = 310
HAPROXY_MIB = 10
# Names the pools' HAProxy gives the gateway's front; no alias may take them.
RESERVED_ALIASES = ("stats", "llamafleet_gateway", "llamafleet_litellm")


class GatewayError(ValueError):
    """Every problem found in the gateway configuration, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("gateway configuration is not valid (nothing was changed):\n  - " + "\n  - ".join(problems))


def pool_server_name(host: str, server: str) -> str:
    """The name of a fleet server inside its pool (HAProxy allows no '/' in a server name)."""
    return f"{host}.{server}"


def affinity_buckets(servers: list[dict], buckets: int = AFFINITY_BUCKETS) -> dict[str, list[int]]:
    """Which hash buckets each server is the home of: weighted rendezvous (highest random weight) hashing.

    Bucket b goes to the server with the highest score -slots / ln(u), u a uniform (0, 1) draw from
    sha256(name, b): the chance of winning is proportional to the server's slots, and a server that
    joins or leaves changes the home of only the buckets it wins or held (Thaler and Ravishankar 1998;
    weighted form: Schindelhauer and Schomaker 2005). Deterministic, so every render agrees.
    """
    def score(server: dict, bucket: int) -> float:
        digest = hashlib.sha256(f"{server['name']}|{bucket}".encode()).digest()
        u = (int.from_bytes(digest[:8], "big") + 1) / (2 ** 64 + 2)  # in (0, 1)
        return -max(int(server["slots"]), 1) / math.log(u)

    homes: dict[str, list[int]] = {s["name"]: [] for s in servers}
    for bucket in range(buckets):
        homes[max(servers, key=lambda server: score(server, bucket))["name"]].append(bucket)
    return homes


def pool_alias(pools: list[dict], model: str | None, role: str | None) -> str | None:
    """The alias of the pool of one model group (a model in a role), or None when no pool holds it:
    one pool per group (pools), so this finds the pool a server is drained from and put back in."""
    return next((p["alias"] for p in pools if p.get("model") == model and p.get("role") == role), None)


def max_input_tokens(servers: list[dict]) -> int:
    """The most tokens one embedding input may have on every server of a group: llama-server computes
    an embedding in one physical batch and refuses a longer input ("input (N tokens) is too large to
    process", server-context.cpp, where the batch cannot be split), and that batch is the smaller of
    ubatch_size and batch_size (llama_context caps n_ubatch at n_batch). The pool refuses a longer input
    before it takes a slot (roles/gateway_pools, input_tokens.lua)."""
    return min(min(int(args["ubatch_size"]), int(args["batch_size"]))
               for args in (effective(server["args"]) for server in servers))


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1024 <= value <= 65535


def upstream_address(bind_address: str | None, ansible_host: str | None, host: str) -> str:
    """Where a pool reaches a server: its bind address, or the host's address when it binds to all."""
    bind = str(bind_address or "127.0.0.1")
    if bind in ANY_ADDRESS:
        return str(ansible_host or host)
    return bind


def _machine(host: dict) -> str:
    """Hosts with a local connection are the controller's machine (the lab's stand-in hosts)."""
    if host.get("connection") == "local":
        return "localhost"
    return str(host.get("ansible_host") or host["host"])


def pools(gateway: dict, hosts: list[dict]) -> dict:
    """Validate the gateway configuration against the fleet and return its pools.

    gateway: the llamafleet_gateway_* variables of the gateway hosts (``models``, ``key``,
    ``port``, ``stats_port``), the servers' key (``server_key``) and ``hosts``: the gateway
    hosts, each {host, connection, ansible_host}.
    hosts: the fleet's hosts, each {host, servers (the fleet model's, with address and slots), connection,
    ansible_host, upstream_address (optional: where the gateway reaches this host's servers)}.
    """
    problems: list[str] = []
    entries = gateway.get("models")
    if not isinstance(entries, list) or not entries:
        raise GatewayError([
            "llamafleet_gateway_models must be a non-empty list of {alias, model, role, port}: one entry per "
            "model group (e.g. {alias: chat, model: stheno-q4km, role: chat, port: 4101})"])

    port = gateway.get("port", DEFAULT_PORT)
    stats_port = gateway.get("stats_port", DEFAULT_STATS_PORT)
    own_ports: dict[int, str] = {}

    def claim(value, where: str) -> None:
        if not _is_port(value):
            problems.append(f"{where} must be an integer in 1024..65535, got {value!r}")
        elif value in own_ports:
            problems.append(f"{where} {value} is already used by {own_ports[value]}; give each a port of its own")
        else:
            own_ports[value] = where

    claim(port, "llamafleet_gateway_port")
    claim(stats_port, "llamafleet_gateway_stats_port")
    count = gateway.get("instances", DEFAULT_INSTANCES)
    instances: list[dict] = []
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_INSTANCES:
        problems.append(f"llamafleet_gateway_instances must be an integer in 1..{MAX_INSTANCES} (LiteLLM processes "
                        f"behind the gateway's port; 2 lets one crash without failing a request), got {count!r}")
    elif _is_port(port):
        # the instances listen on the ports right after the gateway's, on loopback only
        for i in range(count):
            claim(port + 1 + i, f"LiteLLM instance {i} of llamafleet_gateway_instances (llamafleet_gateway_port + {i + 1})")
            instances.append({"name": f"litellm-{i}", "address": "127.0.0.1", "port": port + 1 + i})

    key = gateway.get("key")
    key_problem = api_key_problem("llamafleet_gateway_key", key)
    if key_problem:
        problems.append(key_problem + " (clients authenticate to the gateway with it; group_vars/gateway/vault.yml)")
    elif key == gateway.get("server_key"):
        problems.append("llamafleet_gateway_key equals llama_server_api_key: clients would hold the servers' key and "
                        "could bypass the gateway; give the gateway a key of its own")

    # every server of the fleet by (model, role), and every port any server listens on
    by_group: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    server_ports: dict[int, str] = {}
    for host in hosts:
        for server in host["servers"]:
            by_group.setdefault((server["model"], server["role"]), []).append((host, server))
            server_ports.setdefault(server["port"], f"server {server['name']} on {host['host']}")
    for value, where in own_ports.items():
        if value in server_ports:
            problems.append(f"{where} {value} is already used by {server_ports[value]}; pick a free port")

    aliases: dict[str, int] = {}
    groups: dict[tuple[str, str], str] = {}
    out_pools: list[dict] = []
    gateway_machines = {_machine(g) for g in gateway.get("hosts", [])}
    for i, entry in enumerate(entries):
        where = f"llamafleet_gateway_models[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where} must be a mapping with alias, model, role and port")
            continue
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            problems.append(f"{where} has unknown keys {sorted(unknown)}; valid: {sorted(ENTRY_KEYS)}")
        alias = entry.get("alias")
        if not isinstance(alias, str) or not ALIAS_RE.match(alias):
            problems.append(f"{where}.alias must match {ALIAS_RE.pattern} (clients send it as 'model'), got {alias!r}")
            continue
        where = f"{where} (alias {alias})"
        if alias in RESERVED_ALIASES:
            problems.append(f"{where}: the pools' HAProxy names its own sections {', '.join(RESERVED_ALIASES)}; "
                            f"give the alias another name")
            continue
        if alias in aliases:
            problems.append(f"{where}: the alias is declared twice (entries {aliases[alias]} and {i}); "
                            f"each alias names one pool: rename or remove one")
            continue
        aliases[alias] = i
        model, role = entry.get("model"), entry.get("role")
        if role not in ROLES:
            problems.append(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
            continue
        group = (model, role)
        if group in groups:
            problems.append(f"{where}: model {model} role {role} is already the pool of alias {groups[group]}; "
                            f"two pools over the same servers would each let them take their slots twice over. "
                            f"Use one alias per model group")
            continue
        groups[group] = alias
        claim(entry.get("port"), f"{where}.port")
        if _is_port(entry.get("port")) and entry["port"] in server_ports:
            problems.append(f"{where}.port {entry['port']} is already used by {server_ports[entry['port']]}; "
                            f"pick a free port")
        members = by_group.get(group, [])
        if not members:
            known = sorted({f"{m} ({r})" for m, r in by_group})
            problems.append(f"{where}: no server of model {model!r} with role {role} on any host of the fleet, so its "
                            f"pool would have no servers. Fix model/role (servers serve: {', '.join(known) or 'nothing'}) "
                            f"or remove the entry")
            continue
        fallbacks = entry.get("fallbacks", [])
        if not isinstance(fallbacks, list) or not all(isinstance(f, str) for f in fallbacks):
            problems.append(f"{where}.fallbacks must be a list of other aliases, got {fallbacks!r}")
            fallbacks = []
        for number in ("requests_per_minute", "prompt_tokens", "reply_tokens"):
            value = entry.get(number)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                problems.append(f"{where}.{number} must be a positive number, got {value!r}")
        max_queue = entry.get("max_queue")
        if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1):
            problems.append(f"{where}.max_queue must be an integer 1 or more (requests the pool queues for a slot "
                            f"before it answers 429), got {max_queue!r}")
            max_queue = None
        routing = entry.get("routing", DEFAULT_ROUTING)
        if routing not in ROUTINGS:
            problems.append(f"{where}.routing must be one of {', '.join(ROUTINGS)} (affine: a conversation's requests go to "
                            f"the server holding its prompt cache while it has a free slot), got {routing!r}")
        servers = []
        for host, server in members:
            slots = server["slots"]
            threads_http = int(server["args"].get("threads_http", -1))
            if 0 < threads_http < slots + HTTP_THREADS_SPARE:
                problems.append(
                    f"server {server['name']} on {host['host']}: threads_http {threads_http} with {slots} slot(s): when the "
                    f"pool fills its slots no HTTP thread is left for /health, and a busy server looks dead. Set "
                    f"threads_http to {slots + HTTP_THREADS_SPARE} or more, or leave it unset (llama-server uses parallel + 2)")
            address = upstream_address(server["address"], host.get("ansible_host"), host["host"])
            if not host.get("upstream_address") and address.startswith(LOOPBACK) and gateway_machines and gateway_machines != {_machine(host)}:
                problems.append(
                    f"server {server['name']} on {host['host']} listens on {address}, which gateway host(s) on another "
                    f"machine cannot reach. Set llamafleet_bind_address on {host['host']} to an internal address "
                    f"the gateway reaches (or llamafleet_gateway_upstream_address)")
            servers.append({"name": pool_server_name(host["host"], server["name"]), "host": host["host"],
                            "server": server["name"], "address": host.get("upstream_address") or address,
                            "port": server["port"], "slots": slots})
        if routing == "affine":
            homes = affinity_buckets(servers)
            for server in servers:
                server["buckets"] = homes[server["name"]]
        slots = sum(s["slots"] for s in servers)
        limits = {"max_input_tokens": max_input_tokens([member for _host, member in members])} if role == "embed" else {}
        out_pools.append({**limits, "alias": alias, "model": model, "role": role, "port": entry.get("port"),
                          "slots": slots, "max_queue": QUEUE_PER_SLOT * slots if max_queue is None else max_queue,
                          "fallbacks": fallbacks, "routing": routing,
                          "affinity_buckets": AFFINITY_BUCKETS,
                          "workload": {k: entry[k] for k in ("requests_per_minute", "prompt_tokens", "reply_tokens")
                                       if k in entry},
                          "servers": servers})
    for pool in out_pools:
        for other in pool["fallbacks"]:
            if other not in aliases:
                problems.append(f"llamafleet_gateway_models (alias {pool['alias']}).fallbacks: '{other}' is not an alias "
                                f"(aliases: {', '.join(aliases)})")
            elif other == pool["alias"]:
                problems.append(f"llamafleet_gateway_models (alias {pool['alias']}).fallbacks names the alias itself")
    if problems:
        raise GatewayError(problems)
    return {"port": port, "stats_port": stats_port, "pools": out_pools, "instances": instances,
            "hosts": sorted(g["host"] for g in gateway.get("hosts", [])),
            "memory_mib": len(instances) * LITELLM_MIB + HAPROXY_MIB}
