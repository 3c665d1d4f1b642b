# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rolling restart's preflight: which servers, with what arguments, and whether the rest can carry the load.

Pure: normalized hosts (`_inventory.normalize_host`) and plan rows in, a RollingError listing every
problem (naming the variable and the fix) or the rollout's decisions out. The plan filter calls it,
so the override flows through the fleet model (memory, speed, argv) like any inventory value, and a
rollout the plan refuses is refused before any server is drained.
"""
from __future__ import annotations

import fnmatch
import math

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import ArgsError, validate_args
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Speed, workload

# How much worse than its baseline a replaced server's smoke may be (TTFT x 2, tokens/s / 2): wide
# enough for the noise of a few requests on a busy host, narrow enough to catch a knob that halves speed.
DEFAULT_MAX_REGRESSION = 1.0


class RollingError(ValueError):
    """Every problem of the rollout's controls, one per line; nothing was changed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the rolling restart is refused before any server was drained:\n  - " + "\n  - ".join(problems))


def patterns_of(value, name: str = "llamafleet_rolling_servers") -> list[str]:
    """Server names or globs: a list of strings, or one comma-separated string (-e on the command line)."""
    if value is None or value == "" or value == []:
        return ["*"]
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RollingError([f"{name} must be a list of server names or globs (e.g. [chat-0] or ['chat-*']), got {value!r}"])
    return value


def select(hosts: list[dict], patterns: list[str]) -> list[tuple[str, str]]:
    """(host, server) of every server whose name matches a pattern; a pattern matching nothing is refused."""
    names = [(h["host"], s["name"]) for h in hosts for s in h["servers"]]
    problems = []
    chosen = []
    for pattern in patterns:
        hit = [(h, n) for h, n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hit:
            problems.append(f"llamafleet_rolling_servers: {pattern!r} matches no server; the servers are "
                            f"{', '.join(sorted({n for _host, n in names})) or 'none'}")
        chosen.extend(x for x in hit if x not in chosen)
    if problems:
        raise RollingError(problems)
    return chosen


def apply_override(hosts: list[dict], chosen: list[tuple[str, str]], override) -> list[dict]:
    """The hosts with `override` merged over the args of the chosen servers (validated like inventory args)."""
    if override in (None, {}):
        return hosts
    if not isinstance(override, dict):
        raise RollingError([f"llamafleet_args_override must be a mapping of llama-server knobs (e.g. {{ubatch_size: 128}}), "
                            f"got {override!r}"])
    try:
        validate_args("llamafleet_args_override", override)
    except ArgsError as exc:
        raise RollingError([str(exc)]) from None
    out = []
    for host in hosts:
        servers = []
        for server in host["servers"]:
            if (host["host"], server["name"]) in chosen:
                merged = dict(server["args"], **override)
                try:
                    merged = validate_args(server["name"], merged)
                except ArgsError as exc:
                    raise RollingError([f"llamafleet_args_override on {server['name']}: {exc}"]) from None
                server = dict(server, args=merged)
            servers.append(server)
        out.append(dict(host, servers=servers))
    return out


def validate_bound(value, name: str = "llamafleet_rolling_max_regression") -> float:
    """The regression bound: a number >= 0 (a fraction: 0.5 allows TTFT x 1.5 and tokens/s / 1.5); None: the default."""
    if value is None:
        return DEFAULT_MAX_REGRESSION
    if isinstance(value, bool):
        raise RollingError([f"{name} must be a number >= 0 (0.5 = 50 % worse allowed), got {value!r}"])
    try:
        bound = float(value)
    except (TypeError, ValueError):
        raise RollingError([f"{name} must be a number >= 0 (0.5 = 50 % worse allowed), got {value!r}"]) from None
    if math.isnan(bound) or bound < 0 or math.isinf(bound):
        raise RollingError([f"{name} must be a finite number >= 0 (0.5 = 50 % worse allowed), got {value!r}"])
    return bound


def standin_room(planned: dict, previous: dict, host: str, name: str) -> tuple[bool, str]:
    """Can a copy of a server run beside it while it is replaced (a model group of one server)?

    The copy runs the server's previous configuration: on its GPU it needs what the plan gives that
    configuration (`previous`, the plan without the override), on top of everything the plan puts on
    the device with the new one (`planned`); in host RAM, up to its container's memory limit on top of
    the host's planned use (on the CPU backend that is its device). Returns (fits, the numbers as text).
    """
    new = next(s for s in planned["servers"] if s["host"] == host and s["name"] == name)
    old = next(s for s in previous["servers"] if s["host"] == host and s["name"] == name)
    host_row = next(h for h in planned["hosts"] if h["host"] == host)
    problems, room = [], []
    if new["device"] != "cpu":
        device = next(d for d in planned["devices"] if d["host"] == host and d["device"] == new["device"])
        need = old["memory_mib"]["total"]
        (room if need <= device["free_mib"] else problems).append(
            f"{need:,.0f} MiB on {new['device']} ({device['free_mib']:,.0f} MiB free)")
    limit = old["host_memory_mib"]["container_limit"]
    if host_row["memory_mib"]:
        free = host_row["memory_mib"] - host_row["planned_mib"]
        (room if limit <= free else problems).append(f"up to {limit:,} MiB of host RAM ({free:,.0f} MiB free)")
    else:
        room.append(f"up to {limit:,} MiB of host RAM (llamafleet_host_memory_mib not set: not checked)")
    if problems:
        return False, "a copy beside it needs " + " and ".join(problems)
    return True, "a copy beside it needs " + " and ".join(room)


def standin_rooms(planned: dict, previous: dict | None = None) -> dict[tuple[str, str], tuple[bool, str]]:
    """standin_room() of every server that is alone in its model group (one model and role, on any host)
    and in a gateway pool (a stand-in helps only where a pool can be pointed at it). previous: the plan
    of the configuration the servers run now (default: planned)."""
    previous = previous or planned
    members: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for s in planned["servers"]:
        members.setdefault((s["model"], s["role"]), []).append((s["host"], s["name"]))
    pooled = {(s["host"], s["server"]) for pool in (planned.get("gateway") or {}).get("pools", []) for s in pool["servers"]}
    return {only[0]: standin_room(planned, previous, *only[0])
            for only in members.values() if len(only) == 1 and only[0] in pooled}


def record_standins(planned: dict) -> None:
    """Add to each host's fleet model `standins`: its servers that a change rolls out with a stand-in copy
    beside them (alone in their model group, the copy fits), so that site.yml takes the same path as
    the rolling restart."""
    rooms = standin_rooms(planned)
    for host, fleet in planned["fleet"].items():
        fleet["standins"] = sorted(name for (h, name), (fits, _text) in rooms.items() if h == host and fits)


def capacity(hosts: list[dict], speeds: dict[tuple[str, str], dict], chosen: list[tuple[str, str]],
             allow_outage: bool = False, standins: dict[tuple[str, str], tuple[bool, str]] | None = None) -> list[dict]:
    """For each chosen server: can the rest of its model group carry the group's declared load without it?

    A model group is every server of one model and role on any host. Its declared load is the sum of
    the hosts' llamafleet_workload for the model (chat groups). speeds: (host, server) -> the plan's
    speed row. standins: (host, server) -> standin_room() for the servers a gateway pool routes to
    (a stand-in helps only where a pool can be pointed at it). Returns one row per chosen server:
    group, the servers left, the utilisation of the rest at the declared load (the plan's M/M/c
    model), mode and, when refused, why. mode: rolling (the rest carries the load); standin (a group
    of one whose copy fits beside it: the pool is pointed at the copy while the server is replaced);
    outage (a group of one, accepted with allow_outage).
    """
    standins = standins or {}
    rows = []
    problems = []
    for host_name, name in chosen:
        host = next(h for h in hosts if h["host"] == host_name)
        server = next(s for s in host["servers"] if s["name"] == name)
        group = [(h["host"], s["name"]) for h in hosts for s in h["servers"]
                 if s["model"] == server["model"] and s["role"] == server["role"]]
        rest = [x for x in group if x != (host_name, name)]
        label = f"{server['role']}/{server['model']}"
        row = {"host": host_name, "server": name, "group": label, "rest": [f"{h}.{n}" for h, n in rest],
               "mode": "rolling", "utilisation": None}
        if not rest:
            fits, room = standins.get((host_name, name), (False, "it is in no gateway pool to point at a copy"))
            row["standin"] = room
            if fits:
                row["mode"] = "standin"
            elif allow_outage:
                row["mode"] = "outage"
            else:
                problems.append(
                    f"{name} is the only server of model group {label}, and no copy can serve beside it while it is "
                    f"replaced: {room}. Add a server to the group, free that memory, or set "
                    f"llamafleet_rolling_allow_outage: true to accept a short outage")
            rows.append(row)
            continue
        declared = [h["workload"][server["model"]] for h in hosts if server["model"] in h.get("workload", {})]
        if server["role"] == "chat" and declared:
            rpm = sum(float(d["requests_per_minute"]) for d in declared)
            prompt, reply = int(declared[0]["prompt_tokens"]), int(declared[0]["reply_tokens"])
            result = workload(label, rpm, prompt, reply, [Speed(**speeds[x]) for x in rest])
            row["utilisation"] = round(result.utilisation, 3)
            if not result.stable:
                problems.append(
                    f"without {name}, model group {label} has {result.slots} slot(s) on {', '.join(row['rest'])} for "
                    f"{rpm:g} requests/min x {reply} reply tokens: utilisation {result.utilisation:.0%}, the queue "
                    f"grows without bound. Roll out at a quieter time with a lower llamafleet_workload, or add a "
                    f"server to the group first")
        rows.append(row)
    if problems:
        raise RollingError(problems)
    return rows


def standin(server: dict, offset: int) -> dict:
    """The copy of a server that serves its pool while it is replaced: same image, argv and limits, on its port + offset.

    server: the fleet model's server as it runs now (the rollback's entry: previous image, argv, config
    label). The copy gets its own container name and server name (`-standin`), so nothing that manages
    the server (its watchdog, the leaving check) mistakes one for the other; a copy left behind by a
    stopped run is an unknown container of the host, drained and removed by the next site.yml.
    """
    port = int(server["port"]) + int(offset)
    if not 0 < port < 65536:
        raise ValueError(f"{server['name']}: port {server['port']} + llama_server_standin_port_offset {offset} = {port} is "
                         f"not a TCP port; choose an offset that lands between 1 and 65535")
    argv = list(server["argv"])
    if "--port" not in argv[:-1]:
        raise ValueError(f"{server['name']}: its argv has no --port to move ({argv[:8]})")
    argv[argv.index("--port") + 1] = str(port)
    address = server["url"].split("://", 1)[1].rsplit(":", 1)[0]
    return dict(server, name=f"{server['name']}-standin", container_name=f"{server['container_name']}-standin",
                port=port, url=f"http://{address}:{port}", argv=argv, config=f"standin:{server.get('config', '')}")


def validate_flags(controls: dict) -> list[str]:
    """Problems with the rollout's true/false controls."""
    return [f"{name} must be true or false, got {controls.get(key)!r}"
            for key, name in (("force", "llamafleet_rolling_force"), ("allow_outage", "llamafleet_rolling_allow_outage"))
            if not isinstance(controls.get(key, False), bool)]


def _flags(argv: list[str]) -> dict[str, str]:
    """llama-server flags of a command line -> value ('' for a switch)."""
    out: dict[str, str] = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key = token
            out[key] = ""
        elif key is not None:
            out[key] = token
            key = None
    return out


def args_change(old: list[str], new: list[str]) -> str:
    """What changed between two llama-server command lines, flag by flag: '--ubatch-size 256 -> 128'.

    Whole command lines: the flags llamafleet owns (model, port, key file) show only when they changed."""
    before, after = _flags(old or []), _flags(new or [])
    parts = []
    for flag in list(before) + [f for f in after if f not in before]:
        if before.get(flag) != after.get(flag):
            parts.append(f"{flag} {before.get(flag, '(absent)') or '(on)'} -> {after.get(flag, '(absent)') or '(on)'}")
    return "; ".join(parts) or "no argument changed (forced, or image/limits changed)"


def _num(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def summary(rows: list[dict], override: dict | None, pending: list[str] | None = None) -> str:
    """The rollout's outcome as text, one block per server (the console callback prints it as is)."""
    lines = ["Rolling restart: " + (f"{len(rows)} server(s) handled" if rows else "no server needed replacing")]
    if override:
        knobs = ", ".join(f"{k}: {v}" for k, v in override.items())
        applied = [f"{r['host']}.{r['server']}" for r in rows if "replaced" in r["outcome"].split(":")[0]
                   and not r["outcome"].startswith("not ")]
        if applied:
            lines.append(f"  args override {{{knobs}}}: the running configuration now differs from the inventory on "
                         f"{', '.join(applied)}; put it in the inventory to keep it (a later site.yml puts the "
                         f"inventory's values back)")
        else:
            lines.append(f"  args override {{{knobs}}}: no server runs it (every server runs the configuration it ran before)")
    for row in rows:
        before, after = row.get("before") or {}, row.get("after") or {}
        lines.append(f"  {row['host']}.{row['server']}: {row['outcome']}")
        lines.append(f"    args: {args_change(row.get('old_args'), row.get('new_args'))}")
        lines.append(f"    drain {_num(row.get('drain_s'), ' s')}, load {_num(row.get('load_s'), ' s')}, "
                     f"TTFT {_num(before.get('ttft_s'), ' s')} -> {_num(after.get('ttft_s'), ' s')}, "
                     f"tokens/s {_num(before.get('tokens_per_s'))} -> {_num(after.get('tokens_per_s'))}")
        for log in (row.get("log") or [])[-5:]:
            lines.append(f"    log: {log}")
    if pending:
        lines.append(f"  not replaced (the rollout stopped first; they run as before): {', '.join(pending)}")
    return "\n".join(lines)
