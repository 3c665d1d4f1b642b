"""GGUF description: real and synthetic files, damaged files, remote headers by HTTP range."""
from __future__ import annotations

import os

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import (
    GGUFError,
    read_model_info,
    read_remote_model_info,
)
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import SHAPES
from tests.support.range_server import RangeHandler
from tests.support.synthetic_gguf import write_model

SMALL = dict(architecture="llama", n_layer=4, n_embd=512, n_head=8, n_head_kv=2, head_dim=64, n_ff=1536,
             n_vocab=4096, n_ctx_train=8192)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    return write_model(str(tmp_path_factory.mktemp("m") / "small.gguf"), SMALL, "Q8_0")


def test_reads_shape_and_tensor_sizes(small_model):
    info = read_model_info(small_model)
    assert (info.architecture, info.n_layer, info.n_embd, info.n_vocab) == ("llama", 4, 512, 4096)
    assert info.n_head_kv == [2] * 4 and info.head_dim_k == 64 and info.causal and info.has_kv_cache
    # Q8_0: 34 bytes per 32 values; token_embd is 512 x 4096
    assert info.token_embd_bytes == 512 * 4096 // 32 * 34
    # one block in Q8_0: 2 norms of 512 F32 (2 x 2,048 B), Q and O 512 x 512 (278,528 B each), K and V 512 x 128
    # (69,632 B each), gate, up and down 512 x 1536 (835,584 B each): 3,207,168 B
    assert info.layer_bytes(0) == 3_207_168
    assert not any(info.swa_layers)


def test_sliding_window_layers_follow_the_arch_pattern(tmp_path):
    shape = dict(SHAPES["gemma-3-270m"], n_vocab=4096)
    info = read_model_info(write_model(str(tmp_path / "g.gguf"), shape, "Q8_0"))
    # gemma3: pattern 6 -> every sixth layer is global
    assert info.swa_layers == [(i % 6) < 5 for i in range(18)]
    assert info.n_swa == 512 and info.tied_output


def test_not_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>404</html>" * 10)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_model_info(str(bad))


def test_truncated(small_model, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(small_model, "rb") as src:
        cut.write_bytes(src.read(os.path.getsize(small_model) // 2))
    with pytest.raises(GGUFError, match="truncated|unreadable"):
        read_model_info(str(cut))


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        read_model_info(str(tmp_path / "nope.gguf"))


def test_unknown_architecture(tmp_path):
    path = write_model(str(tmp_path / "x.gguf"), SMALL, "Q8_0")
    data = bytearray(open(path, "rb").read(4096))
    at = data.find(b"llama")  # general.architecture value comes first
    data[at:at + 5] = b"zzzzz"
    with open(path, "r+b") as handle:
        handle.write(bytes(data))
    with pytest.raises(GGUFError, match="architecture 'zzzzz' is not known"):
        read_model_info(path)


def test_cache_reuses_the_description(small_model, tmp_path):
    first = read_model_info(small_model, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1
    again = read_model_info(small_model, cache_dir=str(tmp_path))
    assert again.to_dict() == first.to_dict()


def test_remote_header_by_range_requests(http_dir, tmp_path):
    root, base = http_dir
    shape = dict(SHAPES["llama-3.1-8b"], n_vocab=32000)
    write_model(str(root / "big.gguf"), shape, "Q6_K")
    RangeHandler.served = 0
    info = read_remote_model_info(f"{base}/big.gguf", str(tmp_path / "cache"), first_chunk=64 << 10)
    assert info.n_layer == 32 and info.file_size == os.path.getsize(root / "big.gguf")
    # only the header crossed the wire, not the 6 GB of (sparse) weights
    assert RangeHandler.served < 4 << 20
    served = RangeHandler.served
    again = read_remote_model_info(f"{base}/big.gguf", str(tmp_path / "cache"))
    assert again.weights_bytes == info.weights_bytes and RangeHandler.served == served


def test_remote_not_gguf(http_dir, tmp_path):
    root, base = http_dir
    (root / "page.gguf").write_bytes(b"not a model" * 1000)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_remote_model_info(f"{base}/page.gguf", str(tmp_path / "cache"))
    assert not any((tmp_path / "cache").glob("*.gguf-header*"))
