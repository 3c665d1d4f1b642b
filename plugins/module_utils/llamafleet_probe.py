# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a running llama-server and measure it: health, in-flight requests, one smoke request.

Shipped to hosts with the llama_server_probe module; standard library and Ansible's open_url. The HTTP transport is
one function (`http`), so everything else is pure and unit-tested on llama-server's real formats:
`/health` (200 when the model is loaded, 503 while it loads), `/slots` (a JSON list with
`is_processing` per slot), `/metrics` (Prometheus text with `llamacpp:requests_processing`, only
with --metrics) and the OpenAI-compatible streaming chat completion (server-sent events).
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
from datetime import datetime

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url


class ProbeError(Exception):
    """A probe that could not give its answer; the message says what and where."""


def http(url: str, api_key: str | None = None, body: dict | None = None, timeout: float = 10.0):
    """(status, response object or None). The caller reads and closes the response."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        # plain HTTP to the fleet's own servers: no proxy between the host and its local llama-servers
        resp = open_url(url, data=data, headers=headers, method="POST" if data is not None else "GET", timeout=timeout,
                        use_proxy=False)
        return resp.status, resp
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, None
    except (urllib.error.URLError, OSError, UrlsConnectionError) as err:
        raise ProbeError(f"{url}: {getattr(err, 'reason', err)}") from None


def health(url: str, timeout: float = 5.0) -> int:
    """The HTTP status of /health: 200 ready, 503 loading; 0 when nothing answers."""
    try:
        status, resp = http(f"{url}/health", timeout=timeout)
    except ProbeError:
        return 0
    if resp is not None:
        resp.close()
    return status


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {name: value} for unlabelled samples (llama-server's are)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2 and "{" not in parts[0]:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def busy_slots(slots: list) -> int:
    """Slots working on a request, from /slots."""
    return sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))


def in_flight(url: str, api_key: str | None, timeout: float = 5.0) -> tuple[int, str]:
    """(requests being processed, source). /metrics when the server has --metrics, else /slots."""
    status, resp = http(f"{url}/metrics", api_key, timeout=timeout)
    if status == 200 and resp is not None:
        with resp:
            metrics = parse_metrics(resp.read().decode(errors="replace"))
        if "llamacpp:requests_processing" in metrics:
            return int(metrics["llamacpp:requests_processing"]), "metrics"
    status, resp = http(f"{url}/slots", api_key, timeout=timeout)
    if status == 200 and resp is not None:
        with resp:
            return busy_slots(json.load(resp)), "slots"
    raise ProbeError(f"{url}: neither /metrics (--metrics) nor /slots answered (HTTP {status}); "
                     f"cannot tell whether requests are in flight")


def wait_for(check, timeout: float, interval: float = 0.5, clock=time.monotonic, sleep=time.sleep) -> tuple[bool, float]:
    """Call check() until it returns True or timeout seconds pass: (succeeded, seconds waited)."""
    start = clock()
    while True:
        if check():
            return True, clock() - start
        if clock() - start >= timeout:
            return False, clock() - start
        sleep(interval)


def seconds_since(iso: str, now: float | None = None) -> float:
    """Seconds from a Docker timestamp (State.StartedAt: RFC 3339, nanoseconds, Z) to now (epoch seconds)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", iso.strip())
    if not match:
        raise ProbeError(f"started_at {iso!r} is not an RFC 3339 timestamp like Docker's State.StartedAt")
    base, frac, zone = match.groups()
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).timestamp()
    stamp += float("0." + frac) if frac else 0.0
    return (time.time() if now is None else now) - stamp


def wait_healthy(url: str, timeout: float) -> float:
    ok, waited = wait_for(lambda: health(url) == 200, timeout, interval=1.0)
    if not ok:
        raise ProbeError(f"{url}/health did not answer 200 within {timeout:g} s (model not loaded, or the server "
                         f"does not start: see its container log)")
    return waited


def wait_idle(url: str, api_key: str | None, timeout: float, quiet: float = 1.0) -> tuple[float, str]:
    """Wait until no request is in flight for `quiet` seconds in a row: (seconds waited, source).

    Two readings `quiet` apart: a request that arrives between two polls is not missed by a
    single zero reading at the wrong moment.
    """
    state = {"since": None, "source": "", "last": None}

    def idle() -> bool:
        count, state["source"] = in_flight(url, api_key)
        state["last"] = count
        now = time.monotonic()
        if count:
            state["since"] = None
            return False
        if state["since"] is None:
            state["since"] = now
        return now - state["since"] >= quiet

    ok, waited = wait_for(idle, timeout, interval=0.25)
    if not ok:
        raise ProbeError(f"{url} still had {state['last']} request(s) in flight after {timeout:g} s "
                         f"({state['source']}); raise the drain timeout or look at what it is serving")
    return waited, state["source"]


def parse_stream(lines, clock=time.monotonic, start: float | None = None) -> dict:
    """Read a streamed chat completion (SSE lines, bytes): TTFT, tokens, tokens/s, text.

    TTFT is the time from `start` to the first chunk carrying content. Tokens/s is the decode
    rate after the first token: (tokens - 1) / (last token - first token); with the usage the
    server sends in its final chunk when known, else one token per content chunk (llama-server
    sends one chunk per token).
    """
    start = clock() if start is None else start
    first = last = None
    chunks = 0
    text = []
    usage_tokens = None
    for raw in lines:
        line = raw.decode(errors="replace").strip() if isinstance(raw, bytes) else raw.strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        event = json.loads(payload)
        if "error" in event:
            raise ProbeError(f"the server sent an error in the stream: {event['error']}")
        if event.get("usage"):
            usage_tokens = event["usage"].get("completion_tokens")
        for choice in event.get("choices", []):
            content = (choice.get("delta") or {}).get("content")
            if content:
                now = clock()
                first = now if first is None else first
                last = now
                chunks += 1
                text.append(content)
    if first is None:
        raise ProbeError("the streamed reply carried no token")
    tokens = usage_tokens or chunks
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return {"ttft_s": round(first - start, 4), "tokens": tokens, "tokens_per_s": round(decode, 2) if decode else None,
            "text": "".join(text)}


def smoke_chat(url: str, api_key: str | None, prompt: str, max_tokens: int, timeout: float = 120.0) -> dict:
    """One streamed chat completion, measured from the client."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.monotonic()
    status, resp = http(f"{url}/v1/chat/completions", api_key, body, timeout=timeout)
    if status != 200 or resp is None:
        raise ProbeError(f"{url}/v1/chat/completions answered HTTP {status}")
    with resp:
        return parse_stream(resp, start=start)


def smoke_embed(url: str, api_key: str | None, text: str, timeout: float = 60.0) -> dict:
    """One embedding request: its latency (reported as TTFT: the whole answer is the first token)."""
    start = time.monotonic()
    status, resp = http(f"{url}/v1/embeddings", api_key, {"input": text}, timeout=timeout)
    if status != 200 or resp is None:
        raise ProbeError(f"{url}/v1/embeddings answered HTTP {status}")
    with resp:
        body = json.load(resp)
    elapsed = time.monotonic() - start
    vector = body["data"][0]["embedding"]
    if not vector or not any(vector):
        raise ProbeError(f"{url}/v1/embeddings returned an empty or all-zero vector")
    return {"ttft_s": round(elapsed, 4), "tokens": None, "tokens_per_s": None, "dimensions": len(vector)}


def best_of(runs: list[dict]) -> dict:
    """The best run of several: the lowest TTFT, the highest tokens/s (noise only ever slows a run)."""
    best = dict(min(runs, key=lambda r: r["ttft_s"]))
    rates = [r["tokens_per_s"] for r in runs if r.get("tokens_per_s")]
    best["tokens_per_s"] = max(rates) if rates else None
    best["runs"] = len(runs)
    return best


def regression(baseline: dict, now: dict, bound: float) -> list[str]:
    """Why `now` is worse than `baseline` by more than `bound` (a fraction: 0.5 = 50 % worse); [] if not.

    TTFT may grow to baseline x (1 + bound); tokens/s may fall to baseline / (1 + bound).
    """
    reasons = []
    b_ttft, n_ttft = baseline.get("ttft_s"), now.get("ttft_s")
    if b_ttft and n_ttft is not None and n_ttft > b_ttft * (1 + bound):
        reasons.append(f"TTFT {n_ttft:.3f} s > {b_ttft:.3f} s x {1 + bound:g} (baseline x (1 + bound))")
    b_tps, n_tps = baseline.get("tokens_per_s"), now.get("tokens_per_s")
    if b_tps and n_tps is not None and n_tps < b_tps / (1 + bound):
        reasons.append(f"{n_tps:.1f} tokens/s < {b_tps:.1f} / {1 + bound:g} (baseline / (1 + bound))")
    return reasons
