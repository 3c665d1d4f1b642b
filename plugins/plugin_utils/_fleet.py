# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet model: what runs, computed once by the preflight and applied by the roles.

`_inventory.normalize_host` says what is declared; this module turns one normalized host into
what runs on it: per server the container name, the address clients and pools use, the model
mount and the exact llama-server argv. The plan publishes the result per host as the fact
`llamafleet_fleet`; roles and plays read it and derive none of it again.
"""
from __future__ import annotations

import hashlib
import json
import os

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import pool_alias
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import resolve_parallel
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import effective, render_args

# The contract between the llama-server image and the llama_server role: where the model and the
# API key file are mounted inside every container.
MODEL_DIR = "/models"
API_KEY_FILE = "/run/llamafleet/api_key"
# The contract between the simulated llama-server (roles/llamacpp_build/files/sim/llamasim.py) and
# the fleet model: the speed profile it sleeps by, as JSON in its environment.
SIM_PROFILE_ENV = "LLAMASIM_PROFILE"
# Hex digits of an image tag's digest: 48 bits, no collision between the few builds a host keeps.
IMAGE_DIGEST_DIGITS = 12


def image_digest(inputs: str | list[str]) -> str:
    """The digest part of a locally built image's tag: SHA-256 of everything that goes into the image.

    One rule for every role that builds an image (llama.cpp, the simulator, LiteLLM, HAProxy, the
    watchdog, Prometheus): a changed input gives a new tag, an unchanged build is found and reused.
    `inputs` is the text of each input (a Dockerfile, a base image's name, a JSON of build options),
    taken in order.
    """
    parts = [inputs] if isinstance(inputs, str) else inputs
    if not all(isinstance(part, str) for part in parts):
        raise TypeError("image_digest takes strings (file contents, image names, JSON)")
    return hashlib.sha256("".join(parts).encode("utf-8")).hexdigest()[:IMAGE_DIGEST_DIGITS]


def server_argv(server: dict, model_target: str, address: str) -> list[str]:
    """The exact llama-server command line of one server (without the binary).

    The flags llamafleet owns come first (model, bind address, port, API key file; `_server_args.RESERVED`
    keeps them out of `args`), then the typed args in a stable order.
    """
    return (["--model", model_target, "--host", address, "--port", str(server["port"]),
             "--api-key-file", API_KEY_FILE] + render_args(server["args"]))


def fleet_host(spec: dict) -> dict:
    """What runs on one normalized host (see `_inventory.normalize_host`)."""
    servers = []
    for server in spec["servers"]:
        model_path = spec["models"][server["model"]]["path"]
        model_target = f"{MODEL_DIR}/{os.path.basename(model_path)}"
        slots, unified = resolve_parallel(effective(server["args"]))
        servers.append({
            "name": server["name"],
            "role": server["role"],
            "model": server["model"],
            "gpu": server["gpu"],
            "port": server["port"],
            "address": spec["bind_address"],
            "url": f"http://{spec['bind_address']}:{server['port']}",
            "container_name": spec["container_prefix"] + server["name"],
            "container_memory": server["container_memory"],
            "ulimits": server["ulimits"],
            "slots": slots,
            "kv_unified": unified,
            "args": server["args"],
            "model_path": model_path,
            "model_target": model_target,
            "api_key_target": API_KEY_FILE,
            "argv": server_argv(server, model_target, spec["bind_address"]),
        })
    # The models this host's servers use, as the llm_models role places them (path, sha256, src or url).
    used = sorted({server["model"] for server in spec["servers"]})
    models = {name: {key: spec["models"][name][key] for key in ("path", "sha256", "src", "url") if key in spec["models"][name]}
              for name in used}
    if spec["backend"] == "sim":
        # a simulated server reads no weights: a small stand-in file takes the model's place (llm_models)
        models = {name: {"path": model["path"], "stand_in": True} for name, model in models.items()}
    return {"host": spec["host"], "backend": spec["backend"], "container_prefix": spec["container_prefix"],
            "models": models, "servers": servers}


def simulate(host: dict, profiles: dict[str, dict]) -> None:
    """Give the servers of a simulated host (llamafleet_backend: sim) their speed profiles
    (_speed.sim_profile), as the environment of their containers. Real servers get no `env`, so their
    containers' configuration is what it was."""
    for server in host["servers"]:
        if server["name"] in profiles:
            server["env"] = {SIM_PROFILE_ENV: json.dumps(profiles[server["name"]], sort_keys=True)}


def leaving(containers: list[dict], servers: list[dict], pools: list[dict], host: str) -> list[dict]:
    """The servers that left the inventory, read from the host itself: its llamafleet containers
    (Docker's list, `Names` and `Labels`) that the fleet model no longer declares.

    Each comes with the gateway pool that may still route to it (the pool of its model group: its
    model in its role, from the container's labels), so that the servers play drains it there before
    removing it. What the host runs is the truth: a fresh clone, or AWX checking the project out anew,
    finds the same departures as the checkout that deployed them.
    """
    declared = {s["container_name"] for s in servers}
    out = []
    for container in containers:
        name = container["Names"][0].lstrip("/")
        if name in declared:
            continue
        labels = container.get("Labels") or {}
        server = labels.get("llamafleet.server", name)
        out.append({"name": server, "container_name": name,
                    "pool": pool_alias(pools, labels.get("llamafleet.model"), labels.get("llamafleet.role")),
                    "pool_server": f"{host}.{server}"})
    return sorted(out, key=lambda s: s["container_name"])
