"""A simulated llama-server: llama-server's HTTP API and flags over llamasim_core's scheduler, no model.

Started with the same command line as the real binary (the flags llamafleet renders); it refuses any
flag the pinned llama-server does not know (`flags.json` beside it, from the plan's record of that ref's
`--help`), exactly as the binary does: `error: invalid argument: --x` and exit status 1. The speed
profile comes from the environment (LLAMASIM_PROFILE, JSON: decode_s, prefill_tps, load_s, n_embd,
kv_bytes_per_token), so no flag exists here that the real server lacks. Standard library only: it runs
on the local base image's python3.

What follows llama-server 0c1e570 (tools/server/), so that clients, pools and the watchdog cannot tell:
/health and /v1/health answer without the key (503 "Loading model" until the profile's load time has
passed, as every route does then); every other route wants the key (401 "Invalid API Key",
authentication_error); a prompt of n_ctx tokens or more is 400 exceed_context_size_error; an embedding
input above --ubatch-size is 500 "input (N tokens) is too large to process...", and /tokenize counts
an input as /v1/embeddings does; /metrics with --metrics
only (501 without); /props total_slots and n_ctx; /slots. Replies are deterministic words, tokenized
with llamasim_core.tokenize, counted in usage and timings with the cached and processed prompt tokens.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llamasim_core as core  # noqa: E402

# a reply's words: one token each (four letters at most), so a reply of n tokens is n words
WORDS = ("the", "lamp", "ship", "sea", "wave", "rock", "tide", "moon", "star", "gull", "mist", "bay")
STARTED = -1                # a listener's event: the task found a slot
DEFAULT_REPLY_TOKENS = 32   # a reply's length when the request sets no max_tokens (the sim has no EOS of its own)


class Refused(Exception):
    """A command line llama-server would refuse: its message, exit status 1."""


def parse_argv(argv: list[str], known: set[str]) -> dict[str, str]:
    """--flag [value] pairs; a flag llama-server does not know is refused as common/arg.cpp refuses it."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        flag = argv[i]
        if not flag.startswith("--") or flag not in known:
            raise Refused(f"error: invalid argument: {flag}")
        value = ""
        if i + 1 < len(argv) and not (argv[i + 1].startswith("-") and not argv[i + 1].lstrip("-").replace(".", "").isdigit()):
            value = argv[i + 1]
            i += 1
        out[flag] = value
        i += 1
    return out


# src/llama-chat.cpp at the pinned ref: the built-in template names (LLM_CHAT_TEMPLATES), and the texts
# llm_chat_detect_template recognises, one entry per branch of its if/else chain (every marker of the entry
# in the text; a text that starts with "mistral" is recognised too). Without --jinja, common/arg.cpp refuses
# any other --chat-template at start (common_chat_verify_template -> llama_chat_apply_template returns -1).
BUILTIN_CHAT_TEMPLATES = frozenset({
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1", "mistral-v3", "mistral-v3-tekken",
    "mistral-v7", "mistral-v7-tekken", "phi3", "phi4", "falcon3", "zephyr", "monarch", "gemma",
    "orion", "openchat", "vicuna", "vicuna-orca", "deepseek", "deepseek2", "deepseek3", "deepseek-ocr",
    "command-r", "llama3", "chatglm3", "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4",
    "exaone-moe", "rwkv-world", "granite", "granite-4.0", "granite-4.1", "gigachat", "megrez", "yandex",
    "bailing", "bailing-think", "bailing2", "llama4", "smolvlm", "hunyuan-moe", "gpt-oss", "hunyuan-dense",
    "hunyuan-vl", "kimi-k2", "seed_oss", "grok-2", "pangu-embedded", "solar-open",
})
DETECTED_CHAT_TEMPLATES = (
    ('<|im_start|>',),
    ('[INST]',),
    ('<|assistant|>', '<|end|>'),
    ('[gMASK]<sop>',),
    ('<|assistant|>', '<|user|>'),
    ("<|{{ item['role'] }}|>", '<|begin_of_image|>'),
    ('<|user|>', '<|endoftext|>'),
    ("bos_token + message['role']",),
    ('<start_of_turn>',),
    ("'\\n\\nAssistant: ' + eos_token",),
    ('GPT4 Correct ',),
    ('USER: ', 'ASSISTANT: '),
    ('### Instruction:', '<|EOT|>'),
    ('<|START_OF_TURN_TOKEN|>', '<|USER_TOKEN|>'),
    ('<|start_header_id|>', '<|end_header_id|>'),
    ('[gMASK]sop',),
    ('<用户>',),
    ("'Assistant: ' + message['content'] + eos_token",),
    ('<｜Assistant｜>', '<｜User｜>', '<｜end▁of▁sentence｜>'),
    ('[|system|]', '[|assistant|]', '[|endofturn|]'),
    ('rwkv-world',),
    ("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}",),
    ('<|start_of_role|>',),
    ("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]",),
    ('<|role_start|>',),
    (' Ассистент:',),
    ('<role>ASSISTANT</role>', "'HUMAN'"),
    ('<role>ASSISTANT</role>', '"HUMAN"', '<think>'),
    ('<role>ASSISTANT</role>', '<role>HUMAN</role>', '<|role_end|>'),
    ('<|header_start|>', '<|header_end|>'),
    ('<|endofuserprompt|>',),
    ('<|extra_0|>', '<|extra_4|>'),
    ('<|start|>', '<|channel|>'),
    ('<｜hy_Assistant｜>', '<｜hy_begin▁of▁sentence｜>'),
    ('<｜hy_Assistant｜>', '<｜hy_place▁holder▁no▁3｜>'),
    ('<|im_assistant|>assistant<|im_middle|>',),
    ('<seed:bos>',),
    ("'Assistant: '  + message['content'] + '<|separator|>",),
    ('[unused9]系统：[unused10]',),
    ('<|begin|>', '<|end|>', '<|content|>'),
)


def chat_template_refusal(argv: list[str], flags: dict[str, str]) -> str | None:
    """common/arg.cpp, after every flag is read: a --chat-template that the template engine in use cannot
    apply is refused with this message, and the binary exits with status 1. With --jinja (the default at
    the pinned ref) any text is a Jinja template; without it, only a built-in name or a recognised text."""
    template = flags.get("--chat-template", "")
    jinja = [f for f in argv if f in ("--jinja", "--no-jinja")]
    if not template or not jinja or jinja[-1] == "--jinja":
        return None
    if template in BUILTIN_CHAT_TEMPLATES or template.startswith("mistral") \
            or any(all(marker in template for marker in entry) for entry in DETECTED_CHAT_TEMPLATES):
        return None
    return (f"error: the supplied chat template is not supported: {template}\n"
            "note: llama.cpp was started without --jinja, we only support commonly used templates\n")


PROFILE_KEYS = {"decode_s", "prefill_tps", "load_s", "n_embd", "kv_bytes_per_token"}


def parse_profile(text: str) -> dict:
    """The speed profile (LLAMASIM_PROFILE), checked: a malformed one stops the server before it listens."""
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise Refused(f"error: LLAMASIM_PROFILE is not JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise Refused(f"error: LLAMASIM_PROFILE must be a JSON object with {sorted(PROFILE_KEYS)}, got {text[:80]!r}")
    problems = [f"unknown key {key!r}" for key in sorted(set(profile) - PROFILE_KEYS)]
    steps = profile.get("decode_s", [0.02])
    if not isinstance(steps, list) or not steps or not all(isinstance(t, (int, float)) and t > 0 for t in steps):
        problems.append(f"decode_s must be a non-empty list of positive seconds, got {steps!r}")
    for key in ("prefill_tps", "kv_bytes_per_token", "n_embd"):
        value = profile.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            problems.append(f"{key} must be a positive number, got {value!r}")
    load = profile.get("load_s", 0)
    if isinstance(load, bool) or not isinstance(load, (int, float)) or load < 0:
        problems.append(f"load_s must be zero or more seconds, got {load!r}")
    if problems:
        raise Refused("error: LLAMASIM_PROFILE: " + "; ".join(problems))
    return profile


class Server:
    def __init__(self, flags: dict[str, str], profile: dict, api_keys: list[str]):
        def num(name: str, default: int) -> int:
            return int(flags[name]) if flags.get(name) else default
        parallel = num("--parallel", -1)
        # auto (-1): 4 slots sharing one unified cache, as llama-server resolves it (_memory.resolve_parallel)
        self.slots_n = parallel if parallel > 0 else 4
        self.unified = "--kv-unified" in flags or parallel <= 0
        ctx = -(-num("--ctx-size", 4096) // 256) * 256   # llama.cpp pads the context to 256 cells
        self.n_ctx_slot = ctx if self.unified else ctx // self.slots_n
        self.n_batch = num("--batch-size", 2048)
        self.n_ubatch = min(num("--ubatch-size", 512), self.n_batch)
        self.embedding = "--embeddings" in flags or "--embedding" in flags
        if self.embedding:   # server.cpp: embeddings are processed in one ubatch, n_batch = n_ubatch
            self.n_batch = self.n_ubatch
        self.metrics_on = "--metrics" in flags
        self.model = os.path.basename(flags.get("--model", "model.gguf"))
        self.api_keys = api_keys
        self.n_embd = int(profile.get("n_embd", 640))
        cache_mib = num("--cache-ram", 8192)
        # the host cache holds this many tokens: its MiB at the profile's KV bytes per token; by default
        # Llama-3.1-8B's f16 cache, 32 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes = 128 KiB a token
        kv_per_token = float(profile.get("kv_bytes_per_token", 32 * 8 * 128 * 2 * 2))
        # --cache-ram -1 is no limit (common/arg.cpp), 0 no cache
        cache_tokens = 0 if cache_mib == 0 else 2**62 if cache_mib < 0 else int(cache_mib * 2**20 / kv_per_token)
        similarity = float(flags.get("--slot-prompt-similarity") or core.DEFAULT_SLOT_PROMPT_SIMILARITY)
        self.scheduler = core.Scheduler(self.slots_n, core.Profile(list(profile.get("decode_s", [0.02])),
                                                                   float(profile.get("prefill_tps", 1000.0))),
                                        n_batch=self.n_batch, slot_prompt_similarity=similarity, cache_tokens=cache_tokens,
                                        unified=self.unified, cache_idle_slots="--no-cache-idle-slots" not in flags)
        self.ready_at = time.monotonic() + float(profile.get("load_s", 0.0))
        self.next_id = 0
        self.listeners: dict[int, asyncio.Queue] = {}
        self.wake = asyncio.Event()

    # the engine: one batch at a time, sleeping what the profile says it takes
    async def engine(self) -> None:
        while True:
            if self.scheduler.idle():
                self.wake.clear()
                await self.wake.wait()
            seconds, touched = self.scheduler.step()
            for task in self.scheduler.started:   # before the batch, as llama-server tells a stream it started
                self.notify(task, STARTED)
            if seconds:
                await asyncio.sleep(seconds)
            elif not touched:
                await asyncio.sleep(0.001)   # waiting tasks, no slot: the next step after a release
            for task in touched:
                self.notify(task, task.n_generated)

    def notify(self, task: core.Task, event: int) -> None:
        queue = self.listeners.get(task.id)
        if queue is not None:
            queue.put_nowait(event)

    def submit(self, tokens: list[int], n_predict: int, completion: bool, reply: list[int]) -> tuple[core.Task, asyncio.Queue]:
        self.next_id += 1
        task = core.Task(self.next_id, tokens, n_predict, completion=completion, reply=reply)
        queue: asyncio.Queue = asyncio.Queue()
        self.listeners[task.id] = queue
        self.scheduler.submit(task)
        self.wake.set()
        return task, queue

    # HTTP
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ", 2)[:2]
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                keep = headers.get("connection", "").lower() != "close"
                await self.route(method, path.split("?", 1)[0], headers, body, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def send(self, writer, status: int, payload, content_type: str = "application/json; charset=utf-8") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 500: "Internal Server Error",
                  501: "Not Implemented", 503: "Service Unavailable"}.get(status, "OK")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                     f"Keep-Alive: timeout=5, max=100\r\n\r\n".encode() + data)
        await writer.drain()

    @staticmethod
    def error(message: str, kind: str, code: int, **extra) -> dict:
        return {"error": {"code": code, "message": message, "type": kind, **extra}}

    async def route(self, method: str, path: str, headers: dict, raw: bytes, writer) -> None:
        # "/" is the web UI's path: public, even while loading; this build has no UI, so it is 404 (the lab's
        # llama-server answers the same)
        if time.monotonic() < self.ready_at and path != "/":   # middleware_server_state comes before the key check
            return await self.send(writer, 503, self.error("Loading model", "unavailable_error", 503))
        if path not in ("/", "/health", "/v1/health") and self.api_keys:
            given = headers.get("authorization") or headers.get("x-api-key") or ""
            if given.removeprefix("Bearer ") not in self.api_keys:
                return await self.send(writer, 401, self.error("Invalid API Key", "authentication_error", 401))
        try:
            body = json.loads(raw or b"{}") if method == "POST" else {}
        except ValueError:
            return await self.send(writer, 400, self.error("Failed to parse JSON", "invalid_request_error", 400))
        if path in ("/health", "/v1/health"):
            return await self.send(writer, 200, {"status": "ok"})
        if path == "/metrics":
            return await self.metrics(writer)
        if path == "/props":
            return await self.send(writer, 200, {"default_generation_settings": {"n_ctx": self.n_ctx_slot},
                                                 "total_slots": self.slots_n, "model_path": self.model})
        if path == "/slots":
            return await self.send(writer, 200, [{"id": s.id, "n_ctx": self.n_ctx_slot, "is_processing": s.processing}
                                                 for s in self.scheduler.slots])
        if path in ("/v1/models", "/models"):
            return await self.send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if path == "/tokenize" and method == "POST":   # the embedding pools count an input's tokens with it
            return await self.send(writer, 200, {"tokens": self.input_tokens(body.get("content", ""),
                                                                             bool(body.get("add_special")))})
        if path in ("/v1/embeddings", "/embeddings", "/embedding") and method == "POST":
            return await self.embeddings(body, writer)
        if path in ("/v1/chat/completions", "/chat/completions") and method == "POST":
            return await self.complete(chat_prompt(body.get("messages") or []), body, writer, "chat")
        if path == "/v1/completions" and method == "POST":
            return await self.complete(body.get("prompt", ""), body, writer, "oai")
        if path in ("/completion", "/completions") and method == "POST":   # llama-server's own format
            return await self.complete(body.get("prompt", ""), body, writer, "legacy")
        return await self.send(writer, 404, self.error("File Not Found", "not_found_error", 404))

    async def metrics(self, writer) -> None:
        if not self.metrics_on:
            return await self.send(writer, 501, self.error(
                "This server does not support metrics endpoint. Start it with `--metrics`", "not_supported_error", 501))
        m, s = self.scheduler.metrics, self.scheduler
        counters = {k: m[k] for k in ("prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total",
                                      "tokens_predicted_total", "tokens_predicted_seconds_total", "n_decode_total")}
        gauges = {"requests_processing": s.busy(), "requests_deferred": len(s.waiting),
                  "n_busy_slots_per_decode": m["n_busy_slots_total"] / max(m["n_decode_total"], 1)}
        text = "".join(f"# HELP llamacpp:{k} {k}\n# TYPE llamacpp:{k} {kind}\nllamacpp:{k} {v}\n"
                       for kind, items in (("counter", counters), ("gauge", gauges)) for k, v in items.items())
        await self.send(writer, 200, text.encode(), "text/plain; version=0.0.4")

    @staticmethod
    def input_tokens(item, add_special: bool) -> list[int]:
        """An input's tokens as llama-server's tokenize_mixed makes them: token ids taken as given, a text
        tokenized, with the model's BOS and EOS around a text when add_special (as /v1/embeddings asks)."""
        if isinstance(item, list):
            return [t for part in item for t in ([part] if isinstance(part, int) else core.tokenize(str(part)))]
        tokens = core.tokenize(str(item))
        return [core.hash_piece("<bos>"), *tokens, core.hash_piece("<eos>")] if add_special else tokens

    async def embeddings(self, body: dict, writer) -> None:
        if not self.embedding:
            return await self.send(writer, 501, self.error(
                "This server does not support embeddings. Start it with `--embeddings`", "not_supported_error", 501))
        inputs = body.get("input", body.get("content", ""))
        inputs = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else [inputs]
        data, total = [], 0
        for i, item in enumerate(inputs):
            tokens = self.input_tokens(item, add_special=True)
            if len(tokens) > self.n_ubatch:
                return await self.send(writer, 500, self.error(
                    f"input ({len(tokens)} tokens) is too large to process. increase the physical batch size "
                    f"(current batch size: {self.n_ubatch})", "server_error", 500))
            task, queue = self.submit(tokens, 0, completion=False, reply=[])
            while not task.done:
                await queue.get()
            self.listeners.pop(task.id, None)
            total += len(tokens)
            seed = sum(tokens) % 1000 + 1
            vector = [math.sin(seed * (k + 1)) for k in range(self.n_embd)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vector]})
        await self.send(writer, 200, {"object": "list", "model": self.model, "data": data,
                                      "usage": {"prompt_tokens": total, "total_tokens": total}})

    async def complete(self, prompt, body: dict, writer, mode: str) -> None:
        """A completion in one of llama-server's three formats: `chat` (/v1/chat/completions), `oai`
        (/v1/completions) and `legacy` (/completion: content, stop, tokens_predicted, no [DONE])."""
        tokens = list(prompt) if isinstance(prompt, list) else core.tokenize(str(prompt))
        if len(tokens) >= self.n_ctx_slot:
            return await self.send(writer, 400, self.error(
                f"request ({len(tokens)} tokens) exceeds the available context size ({self.n_ctx_slot} tokens), try "
                f"increasing it", "exceed_context_size_error", 400, n_prompt_tokens=len(tokens), n_ctx=self.n_ctx_slot))
        # tools/server/server-schema.cpp: n_predict, or its aliases in the order they were added
        limit = next((body[k] for k in ("n_predict", "max_completion_tokens", "max_tokens") if body.get(k) is not None), -1)
        limit = DEFAULT_REPLY_TOKENS if int(limit) < 0 else int(limit)
        n_predict = max(min(limit, self.n_ctx_slot - len(tokens)), 1)
        pieces = [(" " if k else "") + WORDS[(len(tokens) + k) % len(WORDS)] for k in range(n_predict)]
        reply = [token for piece in pieces for token in core.tokenize(piece)]
        started = time.monotonic()
        task, queue = self.submit(tokens, n_predict, completion=True, reply=reply)
        stream = bool(body.get("stream"))
        usage_chunk = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {"created": int(time.time()), "id": f"chatcmpl-sim{task.id}", "model": self.model,
                "system_fingerprint": "b0-unknown"}
        kind = {"chat": "chat.completion.chunk", "oai": "text_completion"}.get(mode)
        if stream:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                         b"Keep-Alive: timeout=5, max=100\r\n\r\n")
        first_at, slot_at, sent = None, started, 0
        try:
            while True:
                n = await queue.get()
                if n == STARTED:
                    slot_at = time.monotonic()   # the prompt's clock starts with its slot (update_prompt_start)
                    if stream and mode == "chat":
                        await self.chunk(writer, dict(head, object=kind, choices=[
                            {"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]))
                    continue
                first_at = first_at or time.monotonic()
                if stream and n > sent:
                    text = "".join(pieces[sent:n])
                    if mode == "legacy":
                        await self.chunk(writer, {"index": 0, "content": text, "tokens": reply[sent:n], "stop": False,
                                                  "id_slot": -1, "tokens_predicted": n, "tokens_evaluated": len(tokens)})
                    else:
                        await self.chunk(writer, dict(head, object=kind, choices=[choice(mode, text, None, stream)]))
                sent = n
                if task.done and sent >= task.n_generated:
                    break
        finally:
            self.listeners.pop(task.id, None)
        done = time.monotonic()
        timings = self.timings(task, (first_at or done) - slot_at, done - (first_at or done))
        usage = {"completion_tokens": task.n_generated, "prompt_tokens": len(tokens),
                 "total_tokens": task.n_generated + len(tokens), "prompt_tokens_details": {"cached_tokens": task.n_cached}}
        text = "".join(pieces[:task.n_generated])
        legacy = {"index": 0, "content": "" if stream else text, "tokens": [], "id_slot": task.slot, "stop": True,
                  "model": self.model, "tokens_predicted": task.n_generated, "tokens_evaluated": len(tokens),
                  "prompt": "", "has_new_line": False, "truncated": False, "stop_type": "limit", "stopping_word": "",
                  "tokens_cached": len(tokens) + task.n_generated - 1, "timings": timings}
        if not stream:
            if mode == "legacy":
                return await self.send(writer, 200, legacy)
            return await self.send(writer, 200, dict(head, object="chat.completion" if mode == "chat" else kind,
                                                     choices=[choice(mode, text, "length", stream)], usage=usage,
                                                     timings=timings))
        if mode == "legacy":
            await self.chunk(writer, legacy)
        else:
            last = choice(mode, "", "length", stream)
            if usage_chunk:   # the finishing chunk, then one with the usage (and the timings), as llama-server
                await self.chunk(writer, dict(head, object=kind, choices=[last]))
                await self.chunk(writer, dict(head, object=kind, choices=[], usage=usage, timings=timings))
            else:
                await self.chunk(writer, dict(head, object=kind, choices=[last], timings=timings))
            await self.chunk_raw(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    def timings(task: core.Task, prompt_s: float, predicted_s: float) -> dict:
        prompt_ms, predicted_ms = prompt_s * 1000, predicted_s * 1000
        return {"cache_n": task.n_cached, "prompt_n": task.n_processed, "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / max(task.n_processed, 1),
                "prompt_per_second": task.n_processed / prompt_s if prompt_s else 0.0,
                # per generation step: the first token came with the prompt (server_slot_stats::n_gen_steps)
                "predicted_n": task.n_generated, "predicted_ms": predicted_ms,
                "predicted_per_token_ms": predicted_ms / max(task.n_generated - 1, 1),
                "predicted_per_second": (task.n_generated - 1) / predicted_s if predicted_s else 0.0}

    @classmethod
    async def chunk(cls, writer, event: dict) -> None:
        await cls.chunk_raw(writer, f"data: {json.dumps(event)}\n\n".encode())

    @staticmethod
    async def chunk_raw(writer, data: bytes) -> None:
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()


def choice(mode: str, text: str, finish_reason: str | None, streamed: bool) -> dict:
    """One choice of an OpenAI-format answer: a chat message (a delta when streamed, empty on the finishing
    chunk) or a completion's text."""
    if mode != "chat":
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
    if streamed:
        return {"finish_reason": finish_reason, "index": 0, "delta": {"content": text} if text else {}}
    return {"finish_reason": finish_reason, "index": 0, "message": {"role": "assistant", "content": text}}


def message_text(content) -> str:
    """A message's content as the template sees it: a string as it is; a list of typed parts (OpenAI's
    format) as their texts joined by newlines (common/chat.cpp concat_content_parts); anything else as JSON
    (llama-server refuses a part that is neither text nor a media marker; the simulator has no media)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        text = ""
        for part in content:   # a newline before a part only once there is text (an empty first part adds none)
            text += ("\n" if text else "") + str(part.get("text", ""))
        return text
    return json.dumps(content)


def chat_prompt(messages: list[dict]) -> str:
    """The conversation as one text, as a chat template lays it out (one header per message, the
    assistant's turn opened last): a longer history is the shorter one's text plus more."""
    parts = [f"<|{m.get('role', 'user')}|>\n{message_text(m.get('content'))}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.environ.get("LLAMASIM_FLAGS", os.path.join(here, "flags.json")), encoding="utf-8") as handle:
        known = set(json.load(handle))
    try:
        flags = parse_argv(argv, known)
        refusal = chat_template_refusal(argv, flags)
        if refusal:
            raise Refused(refusal)
        profile = parse_profile(os.environ.get("LLAMASIM_PROFILE", "{}"))
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 1
    # common/arg.cpp: --version prints the build to stderr, --help the usage to stdout; both exit 0
    if "--version" in flags:
        print(f"version: 0 ({os.environ.get('LLAMASIM_REF', 'unknown')})\nbuilt as a simulated llama-server (llamafleet)",
              file=sys.stderr)
        return 0
    if "--help" in flags:
        print("usage: llama-server [options] (simulated: the options of llama-server "
              f"{os.environ.get('LLAMASIM_REF', 'unknown')})\n" + "\n".join(sorted(known)))
        return 0
    keys = []
    if flags.get("--api-key"):
        keys.append(flags["--api-key"])
    if flags.get("--api-key-file"):
        with open(flags["--api-key-file"], encoding="utf-8") as handle:
            keys += [line.strip() for line in handle if line.strip()]

    async def serve() -> None:
        server = Server(flags, profile, keys)
        listener = await asyncio.start_server(server.handle, flags.get("--host", "127.0.0.1"), int(flags.get("--port", "8080")))
        engine = asyncio.create_task(server.engine())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"main: server is listening on http://{flags.get('--host', '127.0.0.1')}:{flags.get('--port', '8080')}"
              f" (simulated llama-server, {server.slots_n} slots)", file=sys.stderr, flush=True)
        await stop.wait()
        listener.close()   # as llama-server on SIGTERM: stop listening and exit, in-flight requests cut
        engine.cancel()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
