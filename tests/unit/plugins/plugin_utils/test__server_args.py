"""Typed llama-server args: validation, rendering, and the check against --help."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import (
    ArgsError,
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
