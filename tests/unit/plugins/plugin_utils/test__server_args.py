"""Typed llama-server args: validation, rendering, and the check against --help."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import (
    ArgsError,
    effective,
    parse_help_flags,
    render_args,
    unknown_flags,
    validate_args,
)

HELP = """
-c,    --ctx-size N                     size of the prompt context
-np,   --parallel N                     number of server slots
-fa,   --flash-attn [on|off|auto]       set Flash Attention use
-cb,   --cont-batching, -nocb, --no-cont-batching
-lm,   --load-mode MODE                 model loading mode (default: auto)
--metrics                               enable prometheus compatible metrics endpoint
"""


def test_render_is_sorted_and_typed():
    assert render_args({"parallel": 2, "ctx_size": 4096, "metrics": True, "cont_batching": False}) == [
        "--no-cont-batching", "--ctx-size", "4096", "--metrics", "--parallel", "2"]


@pytest.mark.parametrize("args,match", [
    ({"ctx_size": "big"}, "args.ctx_size must be an integer"),
    ({"ctx_size": -5}, "args.ctx_size must be an integer >= 0"),
    ({"cache_type_k": "q3_k"}, "must be one of f32, f16"),
    ({"flash_attn": "yes"}, "must be one of on, off, auto"),
    ({"swa_full": "true"}, "must be true or false"),
    ({"port": 9000}, "managed by llamafleet"),
    ({"Ctx-Size": 1}, "is not a flag name"),
    ({"alias": ["a"]}, "non-empty string"),
    ({"custom": [1]}, "must be a scalar"),
    # llama-server: -np N, "number of server slots (default: -1 = auto)"; 0 slots serve nothing
    ({"parallel": 0}, r"args.parallel cannot be 0: set -1 \(auto"),
    ({"parallel": "0"}, "args.parallel cannot be 0"),
])
def test_bad_args_name_the_knob(args, match):
    with pytest.raises(ArgsError, match=match):
        validate_args("chat-0", args)


def test_yaml_booleans_for_on_off_are_understood():
    assert validate_args("c", {"flash_attn": True}) == {"flash_attn": "on"}


def test_unknown_flags_against_help():
    flags = parse_help_flags(HELP)
    assert "--no-cont-batching" in flags and "--ctx-size" in flags
    assert unknown_flags({"ctx_size": 1, "cont_batching": False}, flags) == []
    missing = unknown_flags({"mlock": True, "ctx_sise": 4}, flags)
    assert [m.flag for m in missing] == ["--ctx-sise", "--mlock"]
    assert "did you mean --ctx-size" in missing[0].hint
    assert "load_mode" in missing[1].hint


def test_valid_args_come_back_typed():
    args = {"ctx_size": " 4096 ", "parallel": "-1", "n_gpu_layers": -2, "flash_attn": False, "fit": True,
            "cache_type_k": "q8_0", "swa_full": True, "alias": "chat", "custom_knob": 1.5, "other": "x"}
    assert validate_args("c", args) == {"ctx_size": 4096, "parallel": -1, "n_gpu_layers": -2, "flash_attn": "off",
                                        "fit": "on", "cache_type_k": "q8_0", "swa_full": True, "alias": "chat",
                                        "custom_knob": 1.5, "other": "x"}


@pytest.mark.parametrize("args,message", [
    ([("ctx_size", 1)], "server c: args must be a mapping of llama-server flags, got list"),
    ({"ctx_size": True}, "server c: args.ctx_size must be an integer >= 0, got True"),
    ({"ctx_size": "1.5"}, "server c: args.ctx_size must be an integer >= 0, got '1.5'"),
    ({"parallel": -2}, "server c: args.parallel must be an integer >= -1, got -2"),
    ({"batch_size": 0}, "server c: args.batch_size must be an integer >= 1, got 0"),
    ({"n_gpu_layers": "-3"}, "server c: args.n_gpu_layers must be an integer >= -2, got -3"),
    ({"cache_type_v": "q8"}, "server c: args.cache_type_v must be one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, "
                             "q5_1, got 'q8'"),
    ({"pooling": True}, "server c: args.pooling must be one of none, mean, cls, last, rank, got True"),
    ({"load_mode": "mmap+dio"}, "server c: args.load_mode must be one of auto, none, mmap, mlock, mmap+mlock, dio, got 'mmap+dio'"),
    ({"metrics": 1}, "server c: args.metrics must be true or false, got 1"),
    ({"alias": ""}, "server c: args.alias must be a non-empty string, got ''"),
    ({"custom": None}, "server c: args.custom must be a scalar (string, number or boolean), got None"),
    ({"model": "/m.gguf"}, "server c: args.model is managed by llamafleet: the model is mounted from llamafleet_models; "
                           "set the server's 'model' instead"),
    ({"api_key": "k"}, "server c: args.api_key is managed by llamafleet: API keys come from llama_server_api_key"),
    ({"2fast": 1}, "server c: '2fast' is not a flag name (use llama-server long flag names with dashes as underscores, "
                   "e.g. ctx_size)"),
    ({5: 1}, "server c: '5' is not a flag name"),
])
def test_bad_args_messages(args, message):
    with pytest.raises(ArgsError) as err:
        validate_args("c", args)
    assert str(err.value).startswith(message)


def test_render_booleans_and_values():
    assert render_args({"swa_full": True, "kv_unified": False, "alias": "a b", "n_gpu_layers": -1}) == [
        "--alias", "a b", "--no-kv-unified", "--n-gpu-layers", "-1", "--swa-full"]


def test_unknown_negated_flag_names_its_knob():
    flags = parse_help_flags("--kv-unified  --cont-batching, -nocb, --no-cont-batching\n--fit-ctx N --x-y")
    assert flags == {"--kv-unified", "--cont-batching", "--no-cont-batching", "--fit-ctx", "--x-y"}
    [m] = unknown_flags({"kv_unified": False}, flags)
    # the knob is kv_unified (not no_kv_unified); no close flag name in the help: the generic hint
    assert (m.key, m.flag) == ("kv_unified", "--no-kv-unified")
    [m] = unknown_flags({"no_zz": 1}, flags)
    assert (m.key, m.flag, m.hint) == ("no_zz", "--no-zz", "see llama-server --help of the built image")
    [m] = unknown_flags({"mmap": False}, flags)
    assert m.key == "mmap" and m.hint == "this llama.cpp replaced --no-mmap with --load-mode; set load_mode: none"
    [m] = unknown_flags({"fit_ctxs": 5}, flags)
    assert m.hint == "did you mean --fit-ctx"


def test_effective_fills_llama_server_defaults():
    eff = effective({"parallel": 2})
    assert eff == {"ctx_size": 0, "parallel": 2, "batch_size": 2048, "ubatch_size": 512, "flash_attn": "auto",
                   "cache_type_k": "f16", "cache_type_v": "f16", "n_gpu_layers": -1, "swa_full": False,
                   "kv_unified": False, "cache_ram": 8192, "cache_reuse": 0, "cont_batching": True,
                   "context_shift": False, "load_mode": "auto", "embeddings": False}


@pytest.mark.parametrize("args,load_mode", [({"mlock": True}, "mmap+mlock"), ({"mmap": False}, "none"),
                                            ({"mlock": False, "mmap": True}, "auto"), ({"load_mode": "dio"}, "dio")])
def test_effective_maps_old_flags_to_load_mode(args, load_mode):
    assert effective(args)["load_mode"] == load_mode


def test_hints_list_up_to_three_close_flags_best_first():
    flags = {"--cache-ram", "--cache-reuse", "--cache-prompt", "--cache-type-k", "--cache-type-v", "--ctx-size"}
    # difflib ratios against --cache-typ: type-k/-v 0.88, ram 0.727, prompt 0.72, reuse 0.667; cutoff 0.7, three at most
    [m] = unknown_flags({"cache_typ": "q8_0"}, flags)
    assert m.hint == "did you mean --cache-type-v or --cache-type-k or --cache-ram"
    # --cach: only --cache-ram reaches 0.7 (0.706); the others are 0.6-0.63
    [m] = unknown_flags({"cach": 1}, flags)
    assert m.hint == "did you mean --cache-ram"
