"""The memory model against llama.cpp itself, on the CPU backend where its numbers are exact.

For each configuration llama-server is started with -lv 4 and its own fit projection (the
memory breakdown it prints before loading the model) is read; the plan's prediction must agree:
model and context within 1% or 1 MiB, compute within 10% or 4 MiB. The breakdown prints whole
MiB, rounded down. The table of predicted vs measured is printed at the end of the test run.
"""
from __future__ import annotations

import os

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import read_model_info
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import server_memory
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._server_args import render_args
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import SHAPES
from tests.conftest import ACCURACY_ROWS, LAB_MODEL, ROOT
from tests.support.breakdown import measure
from tests.support.synthetic_gguf import write_model

SMALL_LLAMA = dict(architecture="llama", n_layer=4, n_embd=512, n_head=8, n_head_kv=2, head_dim=64, n_ff=1536,
                   n_vocab=32000, n_ctx_train=8192)
WIDE_GEMMA3 = dict(architecture="gemma3", n_layer=12, n_embd=1024, n_head=8, n_head_kv=4, head_dim=128, n_ff=4096,
                   n_vocab=32000, n_ctx_train=32768, n_swa=256, tied_output=True)
MODELS = {
    "gemma-270m": None,  # the real lab model
    "llama8b-q6k": (SHAPES["llama-3.1-8b"], "Q6_K"),
    "llama8b-q4km": (SHAPES["llama-3.1-8b"], "Q4_K_M"),
    "small-llama-q8": (SMALL_LLAMA, "Q8_0"),
    "wide-gemma3-q8": (WIDE_GEMMA3, "Q8_0"),
    "nomic-f16": (SHAPES["nomic-embed-text-v1.5"], "F16"),
}
Q8 = {"flash_attn": "on", "cache_type_k": "q8_0", "cache_type_v": "q8_0"}
CONFIGS = [
    ("gemma-270m", {"ctx_size": 4096, "parallel": 2}),
    ("gemma-270m", dict(Q8, ctx_size=8192, parallel=1, ubatch_size=256)),
    ("gemma-270m", {"ctx_size": 8192, "parallel": 1, "swa_full": True}),
    ("gemma-270m", {"ctx_size": 2048, "parallel": 4, "flash_attn": "on", "cache_type_k": "q4_0",
                    "cache_type_v": "q4_0", "ubatch_size": 64}),
    ("gemma-270m", {"ctx_size": 16384, "parallel": 2, "kv_unified": True, "ubatch_size": 128}),
    ("gemma-270m", {"ctx_size": 4096, "parallel": 1, "flash_attn": "off"}),
    ("llama8b-q6k", dict(Q8, ctx_size=8192, parallel=1, batch_size=128, ubatch_size=64)),
    ("llama8b-q6k", dict(Q8, ctx_size=32768, parallel=1, ubatch_size=512)),
    ("llama8b-q4km", {"ctx_size": 8192, "parallel": 4, "ubatch_size": 512}),
    ("llama8b-q4km", {"ctx_size": 4096, "parallel": 2, "ubatch_size": 256, "flash_attn": "on",
                      "cache_type_k": "q4_0", "cache_type_v": "q4_0"}),
    ("llama8b-q4km", {"ctx_size": 8192}),
    ("small-llama-q8", {"ctx_size": 2048, "parallel": 1, "flash_attn": "off"}),
    ("small-llama-q8", {"ctx_size": 8192, "parallel": 4, "ubatch_size": 64, "flash_attn": "off"}),
    ("wide-gemma3-q8", dict(Q8, ctx_size=4096, parallel=2)),
    ("wide-gemma3-q8", {"ctx_size": 8192, "parallel": 1, "swa_full": True, "ubatch_size": 128}),
    ("wide-gemma3-q8", {"ctx_size": 4096, "parallel": 2, "swa_full": True, "flash_attn": "on",
                        "cache_type_k": "f16", "cache_type_v": "q8_0"}),
    # embedding servers: every token is an output, and a decoder runs its output layer on all of them
    ("gemma-270m", {"embeddings": True, "pooling": "mean", "ctx_size": 512, "parallel": 1, "batch_size": 512,
                    "ubatch_size": 512}),  # the lab's embedding server
    ("gemma-270m", {"embeddings": True, "pooling": "none", "ctx_size": 1024, "parallel": 1, "batch_size": 256,
                    "ubatch_size": 256}),
    ("gemma-270m", {"embeddings": True, "pooling": "last", "ctx_size": 2048, "parallel": 2, "batch_size": 1024,
                    "ubatch_size": 1024}),
    ("nomic-f16", {"embeddings": True, "ctx_size": 2048, "batch_size": 2048, "ubatch_size": 2048, "parallel": 1}),
    # long contexts, sliding-window layers at long context, attention without flash attention
    ("gemma-270m", {"ctx_size": 32768, "parallel": 1, "ubatch_size": 512}),
    ("gemma-270m", {"ctx_size": 32768, "parallel": 1, "ubatch_size": 256, "flash_attn": "off"}),
    ("llama8b-q4km", dict(Q8, ctx_size=65536, parallel=1, ubatch_size=512)),
    ("llama8b-q4km", {"ctx_size": 16384, "parallel": 2, "ubatch_size": 256, "flash_attn": "off"}),
    ("wide-gemma3-q8", {"ctx_size": 32768, "parallel": 4, "ubatch_size": 512, "flash_attn": "off"}),
]
ROWS = ACCURACY_ROWS  # printed at the end of the session (conftest.pytest_terminal_summary)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    root.chmod(0o755)  # the image runs llama-server as an unprivileged user
    files = {}
    for name, spec in MODELS.items():
        files[name] = LAB_MODEL if spec is None else write_model(str(root / f"{name}.gguf"), *spec, name=name)
        os.chmod(files[name], 0o644)
    cache = os.path.join(ROOT, ".cache", "gguf-headers")
    return {name: (path, read_model_info(path, cache_dir=cache)) for name, path in files.items()}


def within(predicted: float, measured: int, rel: float, abs_mib: float) -> bool:
    # the breakdown truncates to whole MiB: measured <= true value < measured + 1
    return any(abs(predicted - (measured + d)) <= max(abs_mib, rel * measured) for d in (0.0, 0.999))


@pytest.mark.parametrize("model,args", CONFIGS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CONFIGS)])
def test_prediction_matches_llama_server(lab_image, model_files, model, args):
    path, info = model_files[model]
    measured = measure(lab_image, path, render_args(args))
    predicted = server_memory(info, args, "cpu")
    row = (f"{model:15s} {' '.join(render_args(args)):90s} model {predicted.model:7.1f}/{measured['model']:<5d} "
           f"context {predicted.context:6.1f}/{measured['context']:<5d} compute {predicted.compute:5.1f}/{measured['compute']}")
    ROWS.append(row)
    print(row)
    assert within(predicted.model, measured["model"], 0.01, 1), row
    assert within(predicted.context, measured["context"], 0.01, 1), row
    assert within(predicted.compute, measured["compute"], 0.10, 4), row
