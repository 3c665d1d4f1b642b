#!/usr/bin/python
# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set one server of a gateway pool to ready, drain or maint through HAProxy's runtime API."""
from __future__ import annotations

DOCUMENTATION = r"""
---
module: pool_server
short_description: Put one server of a gateway pool in drain, maint or back in ready
version_added: "0.2.0"
description:
  - Talks to the HAProxy runtime API (the admin-level stats socket the C(gateway_pools) role opens) on the
    gateway host, sets the administrative state of one server of one pool, and returns its state and
    current sessions.
  - C(drain) takes the server out of routing for new requests while the ones it is serving finish;
    C(maint) also stops its health checks; C(ready) puts it back. Changed only when the state changes.
  - With O(wait_drained), waits until the server has no current session (its in-flight requests have
    finished), at most O(drain_timeout) seconds, and fails when they have not. The rolling restart
    builds on this.
  - With O(port), the pool's server is pointed at another port of its address (HAProxy's
    C(set server <pool>/<server> addr <address> port <port>)). New requests go there, the requests
    already on the old port finish there. The rolling restart of a model group of one server points
    it at a stand-in copy while the server itself is replaced, then back.
  - A reload of the pool's configuration (a changed pool) resets every server to ready and to the
    port the configuration names.
options:
  socket:
    description: Path of HAProxy's admin socket on the gateway host.
    type: path
    default: /var/lib/llamafleet/gateway_pools/run/admin.sock
  pool:
    description: The pool (HAProxy backend), named after the gateway alias of the model group.
    type: str
    required: true
  server:
    description: The server in the pool, C(<inventory host>.<server name>) (e.g. C(lab.chat-0)).
    type: str
    required: true
  state:
    description: The administrative state to set.
    type: str
    required: true
    choices: [ready, drain, maint]
  wait_drained:
    description: With C(drain) or C(maint), wait until the server's current sessions reach 0.
    type: bool
    default: false
  drain_timeout:
    description: Seconds to wait for the sessions to reach 0 before failing.
    type: int
    default: 120
  port:
    description:
      - The port the pool sends this server's requests to (same address). Omitted, the port is left as it is.
    type: int
  missing_ok:
    description:
      - When the pool or the server is not in this HAProxy's configuration, return C(state=absent)
        unchanged instead of failing (a server that leaves the fleet may already be gone from the pool).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports the state change it would make without sending it to HAProxy.
author: llamafleet contributors (@llamafleet)
"""

EXAMPLES = r"""
- name: Take chat-0 of host gpu-box-1 out of routing and wait for its requests to finish
  llamafleet.fleet.pool_server:
    pool: chat
    server: gpu-box-1.chat-0
    state: drain
    wait_drained: true
    drain_timeout: 120
  delegate_to: "{{ groups['gateway'][0] }}"

- name: Put it back
  llamafleet.fleet.pool_server:
    pool: chat
    server: gpu-box-1.chat-0
    state: ready
  delegate_to: "{{ groups['gateway'][0] }}"

- name: Send chat-0's requests to a stand-in on port 18101 (the server itself is then replaced)
  llamafleet.fleet.pool_server:
    pool: chat
    server: gpu-box-1.chat-0
    state: ready
    port: 18101
  delegate_to: "{{ groups['gateway'][0] }}"
"""

RETURN = r"""
state:
  description:
    - The administrative state after the call (in check mode, the state it would have); C(absent) when
      O(missing_ok) and the server is not in the pool.
  type: str
  returned: always
  sample: drain
previous_state:
  description: The administrative state before the call.
  type: str
  returned: always
  sample: ready
status:
  description: HAProxy's operational status of the server (UP, DOWN, DRAIN, MAINT, UP 1/2 ...).
  type: str
  returned: always
  sample: DRAIN
port:
  description: The port the pool sends this server's requests to, after the call (in check mode, the one it would).
  type: int
  returned: always
  sample: 8101
sessions:
  description: Requests the server is serving now (HAProxy's current sessions, scur).
  type: int
  returned: always
  sample: 0
waited:
  description: Seconds spent waiting for the sessions to reach 0.
  type: float
  returned: always
  sample: 3.5
"""

import socket
import time

from ansible.module_utils.basic import AnsibleModule

# srv_admin_state bits in `show servers state` (HAProxy include/haproxy/server-t.h): forced
# maintenance, and forced drain; other bits are inherited or set by resolution and health.
ADMF_FMAINT = 0x01
ADMF_MAINT_ANY = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
ADMF_FDRAIN = 0x08
ADMF_DRAIN_ANY = 0x08 | 0x10


class RuntimeAPIError(Exception):
    pass


class NotInPool(RuntimeAPIError):
    """The pool or the server is not in this HAProxy's configuration."""


def runtime(path: str, command: str, timeout: float = 5.0) -> str:
    """One command on the runtime API (non-interactive: HAProxy answers and closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise RuntimeAPIError(f"cannot reach HAProxy's runtime API at {path} ({exc}); is the pools container "
                                  f"running (role gateway_pools) and is socket the right path?") from None
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def admin_state(bits: int) -> str:
    if bits & ADMF_MAINT_ANY:
        return "maint"
    if bits & ADMF_DRAIN_ANY:
        return "drain"
    return "ready"


def servers_state_rows(text: str, pool: str):
    """The rows of `show servers state <pool>` as dicts keyed by its header."""
    fields = None
    for line in text.splitlines():
        if line.startswith("# "):
            fields = line[2:].split()
            continue
        parts = line.split()
        if fields and len(parts) >= len(fields) - 1 and parts[1:2] == [pool]:
            yield dict(zip(fields, parts, strict=False))


def parse_servers_state(text: str, pool: str, server: str) -> dict | None:
    """srv_admin_state (bits), srv_addr and srv_port of pool/server from `show servers state <pool>` (None: no such server)."""
    for row in servers_state_rows(text, pool):
        if row.get("srv_name") == server:
            return {"bits": int(row["srv_admin_state"]), "address": row["srv_addr"], "port": int(row["srv_port"])}
    return None


def parse_stat(text: str, pool: str, server: str) -> dict | None:
    """status, scur and qcur of pool/server from `show stat` CSV."""
    header = None
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
            continue
        if header and line:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == pool and row.get("svname") == server:
                return {"status": row.get("status", ""), "sessions": int(row.get("scur") or 0),
                        "queued": int(row.get("qcur") or 0)}
    return None


def server_names(text: str, pool: str) -> list[str]:
    return [row.get("srv_name", "?") for row in servers_state_rows(text, pool)]


def read(path: str, pool: str, server: str) -> tuple[str, dict]:
    """(administrative state, {status, sessions, queued, address, port}) of pool/server."""
    states = runtime(path, f"show servers state {pool}")
    if "Can't find backend" in states or "No such backend" in states:
        raise NotInPool(f"pool {pool!r} does not exist in this HAProxy ({states.strip()}); pools are named "
                        f"after the gateway aliases (llamafleet_gateway_models)")
    row = parse_servers_state(states, pool, server)
    if row is None:
        raise NotInPool(f"server {server!r} is not in pool {pool!r}; its servers are "
                        f"{', '.join(server_names(states, pool)) or 'none'} (<inventory host>.<server name>)")
    stat = parse_stat(runtime(path, f"show stat {pool} 4 -1"), pool, server) or {"status": "?", "sessions": 0, "queued": 0}
    return admin_state(row["bits"]), dict(stat, address=row["address"], port=row["port"])


def command(path: str, line: str) -> None:
    """A runtime API command that answers nothing (state) or a known success line (addr) on success."""
    answer = runtime(path, line).strip()
    if answer and not answer.startswith(("IP changed from", "port changed from", "no need to change")):
        raise RuntimeAPIError(f"HAProxy refused '{line}': {answer}")


def main():
    module = AnsibleModule(
        argument_spec={
            "socket": {"type": "path", "default": "/var/lib/llamafleet/gateway_pools/run/admin.sock"},
            "pool": {"type": "str", "required": True},
            "server": {"type": "str", "required": True},
            "state": {"type": "str", "required": True, "choices": ["ready", "drain", "maint"]},
            "wait_drained": {"type": "bool", "default": False},
            "drain_timeout": {"type": "int", "default": 120},
            "missing_ok": {"type": "bool", "default": False},
            "port": {"type": "int"},
        },
        supports_check_mode=True,
    )
    p = module.params
    if p["drain_timeout"] < 0:
        module.fail_json(msg=f"drain_timeout must be 0 or more seconds, got {p['drain_timeout']}")
    if p["port"] is not None and not 0 < p["port"] < 65536:
        module.fail_json(msg=f"port must be a TCP port (1-65535), got {p['port']}")
    try:
        try:
            before, stat = read(p["socket"], p["pool"], p["server"])
        except NotInPool as exc:
            if not p["missing_ok"]:
                raise
            # nothing of this pool routes to the server: there is nothing to drain
            module.exit_json(changed=False, state="absent", previous_state="absent", status="absent",
                             sessions=0, queued=0, waited=0.0, port=None, msg=str(exc))
        target = f"{p['pool']}/{p['server']}"
        move = p["port"] is not None and p["port"] != stat["port"]
        changed = before != p["state"] or move
        if changed and not module.check_mode:
            # the port first: a server put back in ready is then sent requests on the port it is meant to have
            if move:
                command(p["socket"], f"set server {target} addr {stat['address']} port {p['port']}")
            if before != p["state"]:
                command(p["socket"], f"set server {target} state {p['state']}")
            after, stat = read(p["socket"], p["pool"], p["server"])
        else:
            after = p["state"]
            stat = dict(stat, port=p["port"] if move else stat["port"])
        waited = 0.0
        if p["wait_drained"] and p["state"] != "ready" and not module.check_mode:
            start = time.monotonic()
            while stat["sessions"] > 0:
                waited = time.monotonic() - start
                if waited >= p["drain_timeout"]:
                    module.fail_json(
                        msg=f"{p['pool']}/{p['server']} still serves {stat['sessions']} request(s) after "
                            f"{p['drain_timeout']} s in {after}; raise drain_timeout or look at the server",
                        changed=changed, state=after, previous_state=before, waited=round(waited, 1), **stat)
                time.sleep(0.5)
                after, stat = read(p["socket"], p["pool"], p["server"])
            waited = time.monotonic() - start
    except RuntimeAPIError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=changed, state=after, previous_state=before, status=stat["status"],
                     sessions=stat["sessions"], queued=stat["queued"], waited=round(waited, 1), port=stat["port"])


if __name__ == "__main__":
    main()
