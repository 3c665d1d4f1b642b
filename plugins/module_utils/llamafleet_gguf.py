# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Describe a GGUF model from its metadata and tensor table.

Pure Python, no Ansible imports. Files are read with the official ``gguf`` package
(``gguf.GGUFReader``). A model that is only known by URL is described from its header alone:
the header is fetched with HTTP range requests and stored as a sparse file of the model's full
size, which ``GGUFReader`` reads like the real thing (it never touches tensor data).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field

from ansible.module_utils.urls import open_url

# Architectures whose llama.cpp model creates no KV cache at all (``memory = nullptr`` in
# llama_model::create_memory): embedding encoders and diffusion models.
NO_KV_CACHE_ARCHS = frozenset({
    "bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert",
    "eurobert", "modern-bert", "gemma-embedding", "dream", "llada", "llada-moe", "rnd1",
})

# Decoder architectures with plain (optionally sliding-window) attention whose memory this
# model describes. The value is the default sliding-window pattern llama.cpp applies when the
# GGUF has a sliding window but no explicit pattern (load_swa_pattern(ml, N) in src/models/).
SWA_DEFAULT_PATTERN = {
    "gemma2": 2, "gemma3": 6, "gemma3n": 5, "gemma-embedding": 6, "cohere2": 4,
    "olmo2": 4, "exaone4": 4, "llama4": 4, "openai-moe": 2, "modern-bert": 3,
}
ATTENTION_ARCHS = frozenset({
    "llama", "mistral3", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma", "gemma2", "gemma3",
    "phi3", "granite", "starcoder2", "cohere2", "command-r", "olmo2", "exaone4", "internlm2",
    "stablelm", "deci", "smollm3",
})
SUPPORTED_ARCHS = ATTENTION_ARCHS | NO_KV_CACHE_ARCHS

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


class GGUFError(ValueError):
    """A file or header that is not a usable GGUF model; the message names the file and why."""


@dataclass
class TensorInfo:
    name: str
    type: str
    n_bytes: int
    layer: int | None  # block index, None for token_embd / output / norms


@dataclass
class ModelInfo:
    """What the memory and speed model need to know about one GGUF file."""
    source: str
    architecture: str
    name: str
    file_size: int
    n_layer: int
    n_embd: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_head: list[int]
    n_head_kv: list[int]
    head_dim_k: int
    head_dim_v: int
    n_swa: int
    swa_layers: list[bool]
    causal: bool
    has_kv_cache: bool
    file_type: str
    tensors: list[TensorInfo] = field(default_factory=list)

    # -- derived sizes, all in bytes --------------------------------------------------------------
    @property
    def weights_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def token_embd_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors if t.name == "token_embd.weight")

    @property
    def output_bytes(self) -> int:
        """The output projection; a model with tied embeddings reuses token_embd (0 here)."""
        return sum(t.n_bytes for t in self.tensors if t.name == "output.weight")

    @property
    def tied_output(self) -> bool:
        return not any(t.name == "output.weight" for t in self.tensors)

    def layer_bytes(self, layer: int) -> int:
        return sum(t.n_bytes for t in self.tensors if t.layer == layer)

    @property
    def non_layer_bytes(self) -> int:
        """Norms and other tensors outside the blocks, token_embd and output excluded."""
        return sum(t.n_bytes for t in self.tensors
                   if t.layer is None and t.name not in ("token_embd.weight", "output.weight"))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tensors"] = [asdict(t) for t in self.tensors]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        data = dict(data)
        data["tensors"] = [TensorInfo(**t) for t in data.get("tensors", [])]
        return cls(**data)

    def summary(self) -> dict:
        """A small JSON-friendly description (no tensor table)."""
        return {
            "architecture": self.architecture, "name": self.name, "file_type": self.file_type,
            "file_size": self.file_size, "n_layer": self.n_layer, "n_embd": self.n_embd,
            "n_ff": self.n_ff, "n_vocab": self.n_vocab, "n_ctx_train": self.n_ctx_train,
            "n_head": self.n_head[0] if self.n_head else 0,
            "n_head_kv": self.n_head_kv[0] if self.n_head_kv else 0,
            "head_dim_k": self.head_dim_k, "head_dim_v": self.head_dim_v, "n_swa": self.n_swa,
            "swa_layers": sum(self.swa_layers), "causal": self.causal,
            "has_kv_cache": self.has_kv_cache, "weights_bytes": self.weights_bytes,
            "token_embd_bytes": self.token_embd_bytes, "output_bytes": self.output_bytes,
        }


def _per_layer(value, n_layer: int, what: str, source: str) -> list[int]:
    if value is None:
        raise GGUFError(f"{source}: metadata key {what} is missing")
    if isinstance(value, list):
        if len(value) != n_layer:
            raise GGUFError(f"{source}: {what} has {len(value)} entries for {n_layer} layers")
        return [int(v) for v in value]
    return [int(value)] * n_layer


def read_model_info(path: str, source: str | None = None, cache_dir: str | None = None) -> ModelInfo:
    """Read a local GGUF file (a real one, a sparse stand-in, or a cached header).

    GGUFReader parses every vocabulary string (seconds for a 256k vocabulary), so with a
    cache_dir the description is kept as JSON keyed by the file's path, size and mtime.
    """
    source = source or path
    if not os.path.isfile(path):
        raise GGUFError(f"{source}: no such file")
    if cache_dir:
        st = os.stat(path)
        key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
        cached = os.path.join(cache_dir, key + ".model.json")
        if os.path.exists(cached):
            with open(cached, encoding="utf-8") as handle:
                info = ModelInfo.from_dict(json.load(handle))
            info.source = source
            return info
        info = read_model_info(path, source)
        os.makedirs(cache_dir, exist_ok=True)
        with open(cached + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(info.to_dict(), handle)
        os.replace(cached + ".tmp", cached)
        return info
    import gguf  # the official package; imported here so that callers without it get a clear error

    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GGUFError(f"{source}: not a GGUF file (the first four bytes are not 'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/IndexError/struct errors on damage
        raise GGUFError(f"{source}: unreadable GGUF header ({exc.__class__.__name__}: {exc})") from exc
    file_size = os.path.getsize(path)

    def get(key, default=None):
        fld = reader.get_field(key)
        if fld is None:
            return default
        try:
            return fld.contents()
        except Exception:  # pragma: no cover - damaged field
            raise GGUFError(f"{source}: metadata key {key} is damaged") from None

    arch = get("general.architecture")
    if not arch:
        raise GGUFError(f"{source}: general.architecture is missing")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(
            f"{source}: architecture '{arch}' is not known to llamafleet's memory model; "
            f"supported: {', '.join(sorted(SUPPORTED_ARCHS))}")

    n_layer = int(get(f"{arch}.block_count", 0))
    if n_layer <= 0:
        raise GGUFError(f"{source}: {arch}.block_count is missing or zero")
    n_embd = int(get(f"{arch}.embedding_length", 0))
    n_head = _per_layer(get(f"{arch}.attention.head_count"), n_layer, f"{arch}.attention.head_count", source)
    n_head_kv = _per_layer(get(f"{arch}.attention.head_count_kv", n_head), n_layer,
                           f"{arch}.attention.head_count_kv", source)
    head0 = max(n_head) if n_head else 1
    head_dim_k = int(get(f"{arch}.attention.key_length", n_embd // head0 if head0 else 0))
    head_dim_v = int(get(f"{arch}.attention.value_length", head_dim_k))
    n_ff_raw = get(f"{arch}.feed_forward_length", 0)
    n_ff = int(max(n_ff_raw) if isinstance(n_ff_raw, list) else n_ff_raw)
    n_swa = int(get(f"{arch}.attention.sliding_window", 0) or 0)

    swa_layers = [False] * n_layer
    if n_swa > 0:
        pattern = get(f"{arch}.attention.sliding_window_pattern")
        if isinstance(pattern, list):
            swa_layers = [bool(v) for v in pattern][:n_layer]
        else:
            n_pattern = int(pattern) if pattern is not None else SWA_DEFAULT_PATTERN.get(arch, 0)
            swa_layers = [n_pattern == 0 or (i % n_pattern < n_pattern - 1) for i in range(n_layer)]

    tokens = reader.get_field("tokenizer.ggml.tokens")
    n_vocab = int(get(f"{arch}.vocab_size", 0) or (len(tokens.data) if tokens is not None else 0))

    tensors = []
    data_end = reader.data_offset
    for t in reader.tensors:
        match = _LAYER_RE.match(t.name)
        tensors.append(TensorInfo(t.name, t.tensor_type.name, int(t.n_bytes),
                                  int(match.group(1)) if match else None))
        data_end = max(data_end, int(t.data_offset) + int(t.n_bytes))
    if not tensors:
        raise GGUFError(f"{source}: the tensor table is empty")
    if data_end > file_size:
        raise GGUFError(f"{source}: truncated: tensor data ends at byte {data_end} "
                        f"but the file has {file_size} bytes")
    if n_vocab == 0:
        embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        n_vocab = int(embd.shape[-1]) if embd is not None else 0

    causal = bool(get(f"{arch}.attention.causal", arch not in NO_KV_CACHE_ARCHS))
    file_type = get("general.file_type")
    try:
        import gguf as _g
        file_type_name = _g.LlamaFileType(int(file_type)).name.replace("MOSTLY_", "") if file_type is not None else "unknown"
    except ValueError:
        file_type_name = str(file_type)

    return ModelInfo(
        source=source, architecture=arch, name=str(get("general.name", os.path.basename(source))),
        file_size=file_size, n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_vocab=n_vocab,
        n_ctx_train=int(get(f"{arch}.context_length", 0)), n_head=n_head, n_head_kv=n_head_kv,
        head_dim_k=head_dim_k, head_dim_v=head_dim_v, n_swa=n_swa, swa_layers=swa_layers,
        causal=causal, has_kv_cache=arch not in NO_KV_CACHE_ARCHS, file_type=file_type_name,
        tensors=tensors)


# -- remote headers ---------------------------------------------------------------------------------
def _range_get(url: str, start: int, end: int, timeout: float) -> tuple[bytes, int]:
    """Bytes [start, end] of url and the full size of the resource (from Content-Range)."""
    with open_url(url, headers={"Range": f"bytes={start}-{end}"}, timeout=timeout) as resp:
        body = resp.read()
        if resp.status != 206:
            raise GGUFError(f"{url}: the server does not answer HTTP range requests "
                            f"(status {resp.status}); download the model or give its path")
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if not total.isdigit():
            raise GGUFError(f"{url}: no total size in Content-Range")
        return body, int(total)


def read_remote_model_info(url: str, cache_dir: str, first_chunk: int = 4 << 20,
                           max_header: int = 256 << 20, timeout: float = 30.0) -> ModelInfo:
    """Describe a GGUF behind a URL from its header only, caching the header as a sparse file.

    The header (metadata and tensor table) ends where tensor data begins; fetch a first chunk,
    read it, and fetch more until the parsed data offset lies inside what was fetched.
    """
    os.makedirs(cache_dir, exist_ok=True)
    key = hashlib.sha256(url.encode()).hexdigest()[:24]
    sparse = os.path.join(cache_dir, key + ".gguf-header")
    meta_path = sparse + ".json"
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as handle:
            return ModelInfo.from_dict(json.load(handle))

    fetched = 0
    want = first_chunk
    total = None
    tmp = sparse + ".part"
    try:
        while True:
            body, total = _range_get(url, fetched, want - 1, timeout)
            with open(tmp, "r+b" if fetched else "wb") as handle:
                handle.seek(fetched)
                handle.write(body)
                fetched += len(body)
                handle.truncate(total)  # sparse: the tensor data is a hole
            with open(tmp, "rb") as handle:
                magic = handle.read(4)
            if magic != b"GGUF":
                raise GGUFError(f"{url}: not a GGUF file (the first four bytes are not 'GGUF')")
            try:
                import gguf
                data_offset = gguf.GGUFReader(tmp).data_offset
            except Exception:
                data_offset = None  # header continues past what was fetched
            if data_offset is not None and data_offset <= fetched:
                break
            if fetched >= total or want >= max_header:
                raise GGUFError(f"{url}: no complete GGUF header in the first {fetched} bytes")
            want = min(want * 2, max_header, total)
        info = read_model_info(tmp, source=url)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)  # never leave a half-fetched header behind as if it were complete
        raise
    os.replace(tmp, sparse)
    with open(meta_path, "w", encoding="utf-8") as handle:
        json.dump(info.to_dict(), handle)
    return info
