# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bench's load generator: an asyncio client (aiohttp) that sends what _bench describes.

Streaming chat requests (OpenAI `/v1/chat/completions` with `stream: true`), so that the first
token's arrival is seen by the client; embedding requests beside them. Open loop (each request is
sent at its arrival time whatever happened before, as users do) or closed loop (a fixed number
of requests in flight). Every request becomes one record (see _bench.summarize for the fields).
Why not GuideLLM or vLLM's benchmark client: docs/bench.md.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

try:
    import aiohttp
except ImportError:  # the controller running a bench needs it (requirements.txt); importing this module alone does not
    aiohttp = None

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_prompts import PromptSource, arrival_times
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_settings import BenchConfig
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._bench_stats import parse_metrics, server_from_headers
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import CONVERSATION_HEADER

SETTLE_S = 0.5


@dataclass
class Target:
    """Where a group's requests go: the gateway (one URL, model = alias) or its servers directly."""
    gateway_url: str | None
    gateway_key: str | None
    server_key: str | None
    servers: list[dict]        # every fleet server: name, host, role, model, url, slots
    groups: list[dict]         # _bench.groups()


class Router:
    """Per group, which server a direct request goes to.

    pool: a request waits for the first free slot of any server of its group (what the gateway's
    pools do, and what the plan's queueing model assumes); random: any server, busy or not.
    """

    def __init__(self, target: Target, routing: str, seed: int):
        self.routing = routing
        self.rng = random.Random(f"routing-{seed}")
        self.free = {s["name"]: int(s.get("slots") or 1) for s in target.servers}
        self.by_name = {s["name"]: s for s in target.servers}
        self.cond = asyncio.Condition()

    async def acquire(self, group: dict) -> dict:
        names = group["servers"]
        if self.routing == "random":
            return self.by_name[self.rng.choice(names)]
        async with self.cond:
            while True:
                ready = [n for n in names if self.free[n] > 0]
                if ready:
                    best = max(ready, key=lambda n: self.free[n])
                    self.free[best] -= 1
                    return self.by_name[best]
                await self.cond.wait()

    async def release(self, server: dict) -> None:
        if self.routing == "random":
            return
        async with self.cond:
            self.free[server["name"]] += 1
            self.cond.notify_all()


class Runner:
    def __init__(self, cfg: BenchConfig, target: Target, progress: Callable[[dict], None] | None = None):
        self.cfg = cfg
        self.target = target
        self.progress = progress or (lambda state: None)
        self.prompts = PromptSource(cfg.prompt_tokens, cfg.embed_tokens, cfg.seed, cfg.users, cfg.characters,
                                    turns=cfg.turns, reply_tokens=cfg.reply_tokens)
        self.records: list[dict] = []
        self.chat_groups = [g for g in target.groups if g["role"] == "chat"]
        self.embed_groups = [g for g in target.groups if g["role"] == "embed"]
        self.t0 = 0.0
        self.n_chat = 0
        self.n_embed = 0

    # -- one request ---------------------------------------------------------------------------
    def _endpoint(self, group: dict, server: dict | None, path: str) -> tuple[str, dict, str]:
        if self.target.gateway_url:
            return (self.target.gateway_url.rstrip("/") + path,
                    {"Authorization": f"Bearer {self.target.gateway_key}"} if self.target.gateway_key else {}, group["name"])
        headers = {"Authorization": f"Bearer {self.target.server_key}"} if self.target.server_key else {}
        return server["url"].rstrip("/") + path, headers, group["model"]

    def _failed(self, rec: dict, exc: Exception, arrival: float) -> None:
        """A request that raised: its error (the exception's type, and its text when it has one) and latency."""
        rec["error"] = f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__
        rec["latency"] = time.monotonic() - self.t0 - arrival

    async def chat(self, session: aiohttp.ClientSession, router: Router, group: dict, arrival: float, warmup: bool,
                   max_tokens: int | None = None) -> dict:
        index = self.n_chat
        self.n_chat += 1
        user, conversation, messages = self.prompts.chat_turn(index)
        shared_prefix, shared_words = self.prompts.shared_prefix(user)
        rec = {"id": f"chat-{index}", "kind": "chat", "group": group["name"], "user": user, "arrival": arrival,
               "conversation": conversation, "shared_prefix": shared_prefix, "shared_prefix_words": shared_words,
               "prompt_words": sum(len(m["content"].split()) for m in messages),
               "warmup": warmup, "ok": False, "server": None, "ttft": None, "latency": None, "itl": []}
        server = None if self.target.gateway_url else await router.acquire(group)
        try:
            url, headers, model = self._endpoint(group, server, "/v1/chat/completions")
            if conversation and self.cfg.conversation_header:
                headers = dict(headers, **{CONVERSATION_HEADER: conversation})
            body = {"model": model, "messages": messages, "max_tokens": max_tokens or self.cfg.reply_tokens,
                    "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.8,
                    "seed": self.cfg.seed + index}
            if self.cfg.ignore_eos:
                body["ignore_eos"] = True
            rec["sent"] = time.monotonic() - self.t0
            last = None
            async with session.post(url, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)) as resp:
                rec["status"] = resp.status
                rec["server"] = server["name"] if server else server_from_headers(dict(resp.headers), self.target.servers)
                if resp.status != 200:
                    rec["error"] = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return rec
                buffer = b""
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            continue
                        now = time.monotonic() - self.t0
                        event = json.loads(data)
                        if "error" in event:
                            rec["error"] = str(event["error"])[:200]
                            continue
                        choices = event.get("choices") or []
                        if choices and (choices[0].get("delta") or {}).get("content"):
                            if rec["ttft"] is None:
                                rec["ttft"] = now - arrival
                            else:
                                rec["itl"].append(now - last)
                            last = now
                        usage = event.get("usage")
                        if usage:
                            rec["prompt_tokens"] = usage.get("prompt_tokens")
                            rec["completion_tokens"] = usage.get("completion_tokens")
                        timings = event.get("timings")
                        if timings:  # llama-server's own accounting of this request
                            rec["server_prompt_ms"] = timings.get("prompt_ms")
                            rec["server_predicted_ms"] = timings.get("predicted_ms")
                            rec["cached_tokens"] = timings.get("cache_n")
            rec["latency"] = time.monotonic() - self.t0 - arrival
            rec["ok"] = rec["ttft"] is not None and "error" not in rec
            if not rec["ok"] and "error" not in rec:
                rec["error"] = "the stream carried no content"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self._failed(rec, exc, arrival)
        finally:
            if server:
                await router.release(server)
        return rec

    async def embed(self, session: aiohttp.ClientSession, router: Router, group: dict, arrival: float, warmup: bool) -> dict:
        index = self.n_embed
        self.n_embed += 1
        rec = {"id": f"embed-{index}", "kind": "embed", "group": group["name"], "arrival": arrival, "warmup": warmup,
               "ok": False, "server": None, "ttft": None, "latency": None}
        server = None if self.target.gateway_url else await router.acquire(group)
        try:
            url, headers, model = self._endpoint(group, server, "/v1/embeddings")
            rec["sent"] = time.monotonic() - self.t0
            async with session.post(url, json={"model": model, "input": self.prompts.embed(index)}, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)) as resp:
                rec["status"] = resp.status
                rec["server"] = server["name"] if server else server_from_headers(dict(resp.headers), self.target.servers)
                text = await resp.text()
                if resp.status != 200:
                    rec["error"] = f"HTTP {resp.status}: {text[:200]}"
                else:
                    body = json.loads(text)
                    rec["prompt_tokens"] = (body.get("usage") or {}).get("prompt_tokens")
                    rec["ok"] = bool(body.get("data"))
                    if not rec["ok"]:
                        rec["error"] = "no embedding in the answer"
            rec["latency"] = time.monotonic() - self.t0 - arrival
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            self._failed(rec, exc, arrival)
        finally:
            if server:
                await router.release(server)
        return rec

    # -- phases --------------------------------------------------------------------------------
    async def scrape(self, session: aiohttp.ClientSession) -> dict[str, dict]:
        """Every server's llamacpp: counters now (an error string where /metrics does not answer)."""
        async def one(server):
            headers = {"Authorization": f"Bearer {self.target.server_key}"} if self.target.server_key else {}
            try:
                async with session.get(server["url"].rstrip("/") + "/metrics", headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=15)) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        return server["name"], {"error": f"/metrics answered HTTP {resp.status}"
                                                + (" (start the server with metrics: true)" if resp.status == 501 else "")}
                    return server["name"], parse_metrics(text)
            except (TimeoutError, aiohttp.ClientError) as exc:
                return server["name"], {"error": f"/metrics: {type(exc).__name__} {exc}"}
        return dict(await asyncio.gather(*(one(s) for s in self.target.servers)))

    async def warmup(self, session: aiohttp.ClientSession, router: Router) -> None:
        """Requests that load caches and page in weights; drained before the measured phase and excluded.

        Their prompt token counts (the servers' own) calibrate the prompt generator's length.
        """
        jobs = []
        for group in self.chat_groups:
            for _request in range(self.cfg.warmup_requests * max(len(group["servers"]), 1)):
                jobs.append(self.chat(session, router, group, time.monotonic() - self.t0, True, max_tokens=8))
        for group in self.embed_groups if self.cfg.embed_rate_per_min > 0 else []:
            if self.cfg.warmup_requests:
                jobs.append(self.embed(session, router, group, time.monotonic() - self.t0, True))
        done = await asyncio.gather(*jobs)
        self.records.extend(done)
        counted = [r["prompt_tokens"] for r in done if r["kind"] == "chat" and r.get("prompt_tokens")]
        if counted:
            if not self.cfg.turns:  # a conversation's prompt grows by design: nothing to calibrate to
                self.prompts.calibrate(self.cfg.prompt_tokens, sum(counted) / len(counted))

    async def probe(self, session: aiohttp.ClientSession) -> dict[str, dict]:
        """Each chat server's speed alone, one server at a time, from llama-server's own timings.

        One request of the stated prompt length (no prompt cache) and up to 64 reply tokens. The
        plan's load model is then also evaluated with these speeds (report: "plan, speeds measured
        alone"), which separates a wrong raw speed from a wrong queueing or sharing model.
        """
        out = {}
        headers = {"Authorization": f"Bearer {self.target.server_key}"} if self.target.server_key else {}
        for group in self.chat_groups:
            for name in group["servers"]:
                server = next(s for s in self.target.servers if s["name"] == name)
                messages = self.prompts.chat(self.n_chat)[1]
                self.n_chat += 1
                body = {"model": group["model"], "messages": messages, "max_tokens": min(self.cfg.reply_tokens, 64),
                        "ignore_eos": True, "cache_prompt": False}
                try:
                    async with session.post(server["url"].rstrip("/") + "/v1/chat/completions", json=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)) as resp:
                        timings = (await resp.json()).get("timings") or {}
                    out[name] = {"prefill_tps": timings["prompt_per_second"], "decode_tps": timings["predicted_per_second"],
                                 "prompt_tokens": timings.get("prompt_n")}
                except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
                    out[name] = {"error": f"{type(exc).__name__} {exc}"[:200]}
        return out

    async def measured(self, session: aiohttp.ClientSession, router: Router) -> tuple[float, float]:
        cfg = self.cfg
        start = time.monotonic() - self.t0
        tasks: list[asyncio.Task] = []
        stop = asyncio.Event()

        def launch(coro) -> None:
            task = asyncio.ensure_future(coro)
            task.add_done_callback(lambda t: self.records.append(t.result()))
            tasks.append(task)

        async def open_loop(times: list[float], make) -> None:
            for i, at in enumerate(times):
                delay = start + at - (time.monotonic() - self.t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                launch(make(i, start + at))

        chat_n = len(self.chat_groups)
        if cfg.mode == "rate":
            chat_times = arrival_times(cfg.rate_per_min, cfg.duration_s, cfg.requests, cfg.arrivals, cfg.seed)
            span = cfg.duration_s if cfg.duration_s is not None else (chat_times[-1] if chat_times else 0.0)
            feeders = [open_loop(chat_times, lambda i, at: self.chat(session, router, self.chat_groups[i % chat_n], at, False))]
        else:
            span = cfg.duration_s

            async def worker(k: int) -> None:
                i = k
                while not stop.is_set() and (cfg.requests is None or i < cfg.requests):
                    group = self.chat_groups[i % chat_n]
                    rec = await self.chat(session, router, group, time.monotonic() - self.t0, False)
                    self.records.append(rec)
                    i += cfg.concurrency

            feeders = [worker(k) for k in range(cfg.concurrency)]
        if self.embed_groups and cfg.embed_rate_per_min > 0 and span:
            embed_times = arrival_times(cfg.embed_rate_per_min, span, None, cfg.arrivals, cfg.seed + 1)
            feeders.append(open_loop(embed_times, lambda i, at: self.embed(
                session, router, self.embed_groups[i % len(self.embed_groups)], at, False)))

        async def ticker() -> None:
            while True:
                await asyncio.sleep(2.0)
                now = time.monotonic() - self.t0 - start
                measured = [r for r in self.records if not r["warmup"]]
                if span and cfg.mode == "concurrency" and now >= span:
                    stop.set()
                self.progress({"elapsed_s": now, "span_s": span, "sent": self.n_chat + self.n_embed,
                               "done": len(measured), "errors": sum(not r["ok"] for r in measured),
                               "in_flight": sum(not t.done() for t in tasks)})

        tick = asyncio.ensure_future(ticker())
        try:
            await asyncio.gather(*feeders)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            tick.cancel()
        if cfg.mode == "concurrency" or not span:
            span = time.monotonic() - self.t0 - start
        return start, time.monotonic() - self.t0, span

    async def run(self) -> dict:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)  # llama-server closes streamed connections anyway
        async with aiohttp.ClientSession(connector=connector) as session:
            router = Router(self.target, self.cfg.routing, self.cfg.seed)
            self.t0 = time.monotonic()
            load_before = os.getloadavg()
            await self.warmup(session, router)
            alone = await self.probe(session) if self.cfg.probe else {}
            # llama-server adds a request's tokens to its counters when it releases the slot, just
            # after the last chunk is sent: let the last ones land before each scrape
            await asyncio.sleep(SETTLE_S)
            before = await self.scrape(session)
            start, end, span = await self.measured(session, router)
            await asyncio.sleep(SETTLE_S)
            after = await self.scrape(session)
        return {"records": self.records, "metrics_before": before, "metrics_after": after,
                "window": [start, end], "arrival_span_s": span, "alone": alone, "tokens_per_word": self.prompts.tokens_per_word,
                "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]}


def run(cfg: BenchConfig, target: Target, progress: Callable[[dict], None] | None = None) -> dict:
    if aiohttp is None:
        raise RuntimeError("the bench needs the Python package aiohttp on the controller: pip install -r requirements.txt")
    return asyncio.run(Runner(cfg, target, progress).run())
