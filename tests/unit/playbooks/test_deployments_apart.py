"""Every deployment the lab machine runs side by side keeps its own ports, container names and directories.

The lab (inventory/lab with inventory/lab2), the first user's host simulated (inventory/rehearsal), the CUDA
build test's inventory and the molecule watchdog scenario share one kernel: a port, a container name or a
directory that two of them claim is a collision. (The other molecule scenarios run their roles inside
instance containers; molecule/llama_server's sibling servers use ports 8311-8312 and names of their own.)
Directories are compared as whole paths: one nested in another's is not a collision here. One did happen: inventory/rehearsal kept the watchdog
role's default watchdog_config_dir, so its site.yml overwrote the lab watchdog's config.json. The lab's
watchdog read it at its next start and listened on the rehearsal's port with the rehearsal's 16 servers.
The next molecule run of the watchdog role then met it on 9491, and CI failed.

Each value is what a play would use: the inventory's variable over the role's default, templated by Ansible.
The servers and the gateway's ports and instances come from the fleet model (plan_inventory). A build directory
is compared: its per-tag folders are named by the digest of their inputs, but its current-image file names one
deployment's image. The rehearsal shared the lab's, so the lab's tests and the molecule llama_server scenario
could read the simulator's image as the lab's.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from collections.abc import Mapping

import pytest
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.vars.manager import VariableManager

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory_plan import plan_inventory
from tests.conftest import ROOT

# (deployment, inventory sources, the roles it runs on this machine)
DEPLOYMENTS = [
    ("lab", ["inventory/lab", "inventory/lab2"],
     ["llamacpp_build", "llama_server", "gateway", "gateway_pools", "watchdog", "monitoring"]),
    ("rehearsal", ["inventory/rehearsal"], ["llamacpp_build", "llama_server", "gateway", "gateway_pools", "watchdog", "monitoring"]),
    ("CUDA build", ["tests/cuda_build/inventory"], ["llamacpp_build"]),
    ("molecule watchdog", ["molecule/watchdog/inventory.yml"], ["watchdog", "monitoring"]),
]
# what each role claims on its host: (kind, variable); the gateway roles only on the gateway's hosts
# llama_server_config_dir holds the fleet's one server key: the hosts of one deployment share it (lab, lab2)
CLAIMS = {
    # <build dir>/current-image names the image the deployment's servers run (the lab's is read by the tests)
    "llamacpp_build": [("directory", "llamacpp_build_dir")],
    "llama_server": [("directory", "llama_server_config_dir")],
    "gateway": [("directory", "gateway_dir")],
    "gateway_pools": [("directory", "gateway_pools_dir"), ("container", "gateway_pools_container_name")],
    "watchdog": [("port", "watchdog_port"), ("container", "watchdog_container_name"),
                 ("container", "watchdog_keeper_container_name"), ("directory", "watchdog_config_dir"),
                 ("directory", "watchdog_state_dir")],
    "monitoring": [("port", "monitoring_port"), ("container", "monitoring_container_name"),
                   ("directory", "monitoring_config_dir"), ("directory", "monitoring_data_dir")],
}
GATEWAY_ROLES = {"gateway", "gateway_pools"}
FLEET_WIDE = {"llama_server_config_dir", "llamacpp_build_dir"}


def _trusted(value):
    """Role defaults as Ansible loads them: their strings are templates."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    return value


class _HostVars(Mapping):
    """One host's variables, role defaults under the inventory's, each templated when read."""

    def __init__(self, loader, variables: dict):
        self._variables = variables
        self._templar = Templar(loader=loader, variables=variables)

    def __getitem__(self, key):
        return self._templar.template(self._variables[key])

    def __iter__(self):
        return iter(self._variables)

    def __len__(self):
        return len(self._variables)


def _claims(sources: list[str], roles: list[str]) -> list[tuple[str, str, str]]:
    """(kind, value, who) once for every port, container name and directory this deployment uses."""
    if AnsibleCollectionConfig.collection_finder is None:   # the lookups need it
        init_plugin_loader()
    loader = DataLoader()
    loader.set_basedir(ROOT)
    inventory = InventoryManager(loader=loader, sources=[os.path.join(ROOT, s) for s in sources])
    variables = VariableManager(loader=loader, inventory=inventory)
    defaults = {}
    for role in roles:
        defaults.update(_trusted(loader.load_from_file(os.path.join(ROOT, "roles", role, "defaults", "main.yml"))))
    # what the roles use (their defaults under the inventory), and what the plan reads (the inventory alone, as
    # Ansible's hostvars hold it: a role default is not a host variable, and the plan refuses some of them)
    hostvars, inventory_vars = {}, {}
    for host in inventory.get_hosts():
        declared = dict(variables.get_vars(host=host, include_hostvars=False), playbook_dir=ROOT)
        hostvars[host.name] = _HostVars(loader, dict(defaults, **declared))
        inventory_vars[host.name] = _HostVars(loader, declared)
    gateway_hosts = [h.name for h in inventory.get_hosts("gateway")] if GATEWAY_ROLES & set(roles) else []
    claims = set()
    for host, hv in hostvars.items():
        for role in roles:
            if role in GATEWAY_ROLES and host not in gateway_hosts:
                continue
            claims |= {(kind, str(hv[name]), name if name in FLEET_WIDE else f"{host} {name}") for kind, name in CLAIMS[role]}
    claims = sorted(claims)
    if "llama_server" in roles:
        fleet_hosts = [h.name for h in inventory.get_hosts("llamafleet")]
        planned = plan_inventory(inventory_vars, fleet_hosts, os.path.join(ROOT, ".cache", "gguf-headers"), ROOT, gateway_hosts)
        for host, fleet in planned["fleet"].items():
            for server in fleet["servers"]:
                claims += [("port", str(server["port"]), f"{host} server {server['name']}"),
                           ("container", server["container_name"], f"{host} server {server['name']}")]
        gateway = planned["gateway"]
        prefix = hostvars[gateway_hosts[0]]["gateway_container_prefix"]
        claims += [("port", str(gateway["port"]), "gateway front"), ("port", str(gateway["stats_port"]), "gateway stats")]
        claims += [("port", str(pool["port"]), f"gateway pool {pool['alias']}") for pool in gateway["pools"]]
        for instance in gateway["instances"]:
            claims += [("port", str(instance["port"]), f"gateway {instance['name']}"),
                       ("container", prefix + instance["name"], f"gateway {instance['name']}")]
    elif "watchdog" in roles:
        servers = hostvars["instance"]["molecule_servers"]
        claims += [("port", str(s["port"]), f"stand-in {s['name']}") for s in servers]
        claims += [("container", s["container_name"], f"stand-in {s['name']}") for s in servers]
    return claims


def owners() -> dict[str, list[str]]:
    """Who claims each "kind value", over every deployment."""
    out = collections.defaultdict(list)
    for deployment, sources, roles in DEPLOYMENTS:
        for kind, value, who in _claims(sources, roles):
            out[f"{kind} {value}"].append(f"{deployment}: {who}")
    return out


@pytest.fixture(scope="module")
def claims() -> dict[tuple[str, str], list[str]]:
    """owners(), computed in a process of its own: Ansible's plugin loader, once set up, changes how the
    collection imports for the other tests of this session."""
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "collections")])
    result = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=path))
    assert result.returncode == 0, result.stderr[-3000:]
    return {tuple(key.split(" ", 1)): who for key, who in json.loads(result.stdout).items()}


def test_no_two_deployments_on_the_lab_machine_claim_one_port_container_or_directory(claims):
    shared = {f"{kind} {value}": who for (kind, value), who in claims.items() if len(who) > 1}
    assert not shared, shared


def test_the_claims_are_read_from_every_deployment(claims):
    """The comparison above sees what each deployment runs (a claim not read would hide a collision)."""
    seen = {who.split(":")[0] for owners in claims.values() for who in owners}
    assert seen == {d[0] for d in DEPLOYMENTS}
    # one value each, written down from the inventories and the role defaults
    assert claims[("directory", "/etc/llamafleet/watchdog")] == ["lab: lab watchdog_config_dir"]
    assert claims[("port", "9391")] == ["lab: lab watchdog_port"]
    assert claims[("port", "9393")] == ["lab: lab2 watchdog_port"]
    assert claims[("port", "8301")] == ["lab: lab2 server chat-0"]
    assert claims[("port", "4511")] == ["rehearsal: gateway pool stheno"]
    assert claims[("container", "llamafleet-rehearsal-embed-7")] == ["rehearsal: first-user-sim server embed-7"]
    assert claims[("container", "llamafleet-litellm-1")] == ["lab: gateway litellm-1"]


if __name__ == "__main__":
    print(json.dumps(owners()))
