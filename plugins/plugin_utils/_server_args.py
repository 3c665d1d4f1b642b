# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The llama-server argument schema: typed knobs in, a checked command line out.

Inventory ``args`` use llama-server's long flag names with dashes as underscores. Known knobs are
type-checked here; every rendered flag is then checked against the ``--help`` of the binary that
was actually built (flags come and go between llama.cpp versions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
QUANTIZED_KV_TYPES = frozenset(KV_CACHE_TYPES) - {"f32", "f16", "bf16"}
# bytes per element of a KV cache type (ggml block size / values per block)
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32,
                 "q4_1": 20 / 32, "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32}
ON_OFF_AUTO = ("on", "off", "auto")
LOAD_MODES = ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")

# name -> (kind, choices or minimum). kind: int | str | bool | enum
SCHEMA: dict[str, tuple[str, object]] = {
    "ctx_size": ("int", 0),
    "parallel": ("int", -1),
    "batch_size": ("int", 1),
    "ubatch_size": ("int", 1),
    "flash_attn": ("enum", ON_OFF_AUTO),
    "cache_type_k": ("enum", KV_CACHE_TYPES),
    "cache_type_v": ("enum", KV_CACHE_TYPES),
    "n_gpu_layers": ("int", -2),
    "threads": ("int", -1),
    "threads_batch": ("int", -1),
    "threads_http": ("int", -1),
    "swa_full": ("bool", None),
    "kv_unified": ("bool", None),
    "cache_ram": ("int", -1),
    "cache_reuse": ("int", 0),
    "cache_prompt": ("bool", None),
    "cont_batching": ("bool", None),
    "context_shift": ("bool", None),
    "mlock": ("bool", None),
    "mmap": ("bool", None),
    "load_mode": ("enum", LOAD_MODES),
    "embeddings": ("bool", None),
    "pooling": ("enum", ("none", "mean", "cls", "last", "rank")),
    "metrics": ("bool", None),
    "slots": ("bool", None),
    "fit": ("enum", ("on", "off")),
    "n_predict": ("int", -2),
    "alias": ("str", None),
    "chat_template": ("str", None),
    "verbosity": ("int", 0),
    "timeout": ("int", 1),
    "jinja": ("bool", None),
    "seed": ("int", -1),
}

# Knobs whose schema minimum is -1 (auto) but that llama-server refuses at 0, and what to set instead.
NOT_ZERO = {"parallel": "set -1 (auto: 4 slots with a unified KV cache) or the number of slots, 1 or more"}

# Flags llamafleet renders itself: setting them in args would break the container contract.
RESERVED = {
    "model": "the model is mounted from llamafleet_models; set the server's 'model' instead",
    "host": "the bind address comes from llamafleet_bind_address",
    "port": "set the server's 'port' instead",
    "api_key": "API keys come from llama_server_api_key",
    "api_key_file": "API keys come from llama_server_api_key",
}

# llama-server defaults of the pinned tree (common/common.h), used when a knob is not set.
DEFAULTS = {
    "ctx_size": 0, "parallel": -1, "batch_size": 2048, "ubatch_size": 512, "flash_attn": "auto",
    "cache_type_k": "f16", "cache_type_v": "f16", "n_gpu_layers": -1, "swa_full": False,
    "kv_unified": False, "cache_ram": 8192, "cache_reuse": 0, "cont_batching": True,
    "context_shift": False, "load_mode": "auto", "embeddings": False,
}

# Hints for flags that older guides use and newer trees renamed or removed.
RENAMED = {
    "mlock": "this llama.cpp replaced --mlock with --load-mode; set load_mode: mmap+mlock",
    "mmap": "this llama.cpp replaced --no-mmap with --load-mode; set load_mode: none",
    "no_mmap": "this llama.cpp replaced --no-mmap with --load-mode; set load_mode: none",
    "flash_attn_bool": "flash_attn takes on|off|auto",
}


class ArgsError(ValueError):
    """Bad server arguments; the message names the server, the knob and what is valid."""


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def validate_args(server: str, args: dict) -> dict:
    """Type-check known knobs; unknown knobs pass through (the binary's --help decides)."""
    if not isinstance(args, dict):
        raise ArgsError(f"server {server}: args must be a mapping of llama-server flags, got {type(args).__name__}")
    clean = {}
    for key, value in args.items():
        where = f"server {server}: args.{key}"
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ArgsError(f"server {server}: '{key}' is not a flag name (use llama-server long "
                            f"flag names with dashes as underscores, e.g. ctx_size)")
        if key in RESERVED:
            raise ArgsError(f"{where} is managed by llamafleet: {RESERVED[key]}")
        kind, spec = SCHEMA.get(key, ("any", None))
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
                    value = int(value)
                else:
                    raise ArgsError(f"{where} must be an integer >= {spec}, got {value!r}")
            if value < spec:
                raise ArgsError(f"{where} must be an integer >= {spec}, got {value}")
            if key in NOT_ZERO and value == 0:
                raise ArgsError(f"{where} cannot be 0: {NOT_ZERO[key]}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ArgsError(f"{where} must be true or false, got {value!r}")
        elif kind == "enum":
            if isinstance(value, bool) and set(spec) >= {"on", "off"}:
                value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
            if not isinstance(value, str) or value not in spec:
                raise ArgsError(f"{where} must be one of {', '.join(spec)}, got {value!r}")
        elif kind == "str":
            if not isinstance(value, str) or not value:
                raise ArgsError(f"{where} must be a non-empty string, got {value!r}")
        elif not isinstance(value, (str, int, float, bool)) or value is None:
            raise ArgsError(f"{where} must be a scalar (string, number or boolean), got {value!r}")
        clean[key] = value
    return clean


def render_args(args: dict) -> list[str]:
    """The command line for typed args, in a stable order (sorted by knob)."""
    argv: list[str] = []
    for key in sorted(args):
        value = args[key]
        if isinstance(value, bool):
            argv.append(flag_name(key) if value else "--no-" + key.replace("_", "-"))
        else:
            argv.extend([flag_name(key), str(value)])
    return argv


def parse_help_flags(help_text: str) -> set[str]:
    """Every long flag (``--name``) that a ``llama-server --help`` output mentions."""
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", help_text))


@dataclass
class UnknownFlag:
    key: str
    flag: str
    hint: str


def unknown_flags(args: dict, help_flags: set[str]) -> list[UnknownFlag]:
    """The rendered flags of args that the built binary does not know."""
    missing = []
    for flag in render_args(args):
        if not flag.startswith("--") or flag in help_flags:
            continue
        key = flag[2:].replace("-", "_")
        base = key[3:] if key.startswith("no_") and key[3:] in args else key
        hint = RENAMED.get(base) or _closest(flag, help_flags)
        missing.append(UnknownFlag(base, flag, hint))
    return missing


def _closest(flag: str, known: set[str]) -> str:
    import difflib
    near = difflib.get_close_matches(flag, sorted(known), n=3, cutoff=0.7)
    return ("did you mean " + " or ".join(near)) if near else "see llama-server --help of the built image"


def effective(args: dict) -> dict:
    """args with llama-server's defaults filled in (what the server will actually use)."""
    merged = dict(DEFAULTS)
    merged.update(args)
    if merged.get("mlock"):
        merged["load_mode"] = "mmap+mlock"
    if merged.get("mmap") is False:
        merged["load_mode"] = "none"
    return merged
