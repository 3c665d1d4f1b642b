# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bench core: the load's settings, its prompts, the metrics of a run and the plan beside them.

Pure Python (no Ansible, no network): the client (_bench_client) sends what this module describes
and records one dict per request; everything computed from those records is here, unit-tested.

Metric definitions follow vLLM's benchmark_serving (and GuideLLM, which uses the same ones):
- TTFT: from the request's arrival (its scheduled send time in an open-loop run) to the first
  streamed chunk that carries content. Waiting for a slot is part of it, as a user sees it.
- ITL: the gaps between successive content chunks of a request, pooled over all requests.
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request with more than one token.
- E2E latency: arrival to the last byte.
- Request throughput: completed requests / window; output throughput: output tokens / window;
  the window runs from the first measured arrival to the last measured completion.
Percentiles interpolate linearly between order statistics (numpy's default, as vLLM uses).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_probe import parse_metrics as prometheus_samples

PRESET = {  # the first user's load: 30 chat requests/min, ~500-token prompts, up to 512-token replies
    "rate_per_min": 30.0, "prompt_tokens": 500, "reply_tokens": 512, "embed_rate_per_min": 30.0,
    "embed_tokens": 64,
}
# Tokens per English word for Llama-3 / SmolLM2-style BPE vocabularies on plain prose; the run
# corrects it from the servers' own usage counts during the warm-up (calibrate()).
TOKENS_PER_WORD = 1.3
PERCENTILES = (50, 95, 99)


class BenchError(ValueError):
    """A bench setting that cannot work; the message names the variable and the fix."""


# -- settings ------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    rate_per_min: float | None
    concurrency: int | None
    duration_s: float | None
    requests: int | None
    prompt_tokens: int
    reply_tokens: int
    embed_rate_per_min: float
    embed_tokens: int
    arrivals: str
    warmup_requests: int
    timeout_s: float
    ignore_eos: bool
    seed: int
    users: int
    characters: int
    routing: str
    probe: bool
    turns: int = 0                    # > 0: multi-turn conversations of this many turns (PromptSource)
    conversation_header: bool = True  # send each conversation's key (X-Llamafleet-Conversation) when turns > 0

    @property
    def mode(self) -> str:
        return "concurrency" if self.concurrency else "rate"


def _number(name: str, value, kind=float, allow_zero: bool = False):
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise BenchError(f"llamafleet_bench_{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise BenchError(f"llamafleet_bench_{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}; "
                         f"e.g. llamafleet_bench_{name}: {PRESET.get(name, 60)}")
    return number


def config(values: dict) -> BenchConfig:
    """Validate the llamafleet_bench_* settings (keys without the prefix); raise BenchError naming each."""
    rate = _number("rate_per_min", values.get("rate_per_min"))
    concurrency = _number("concurrency", values.get("concurrency"), int)
    if rate is not None and concurrency is not None:
        raise BenchError("llamafleet_bench_rate_per_min and llamafleet_bench_concurrency are both set: a run is either "
                         "open-loop at a rate or closed-loop at a fixed concurrency; unset one of them")
    if rate is None and concurrency is None:
        rate = PRESET["rate_per_min"]
    duration = _number("duration_s", values.get("duration_s"))
    count = _number("requests", values.get("requests"), int)
    if duration is not None and count is not None:
        raise BenchError("llamafleet_bench_duration_s and llamafleet_bench_requests are both set: the run ends after a "
                         "duration or after a number of requests; unset one of them")
    if duration is None and count is None:
        duration = 60.0
    arrivals = str(values.get("arrivals") or "poisson")
    if arrivals not in ("poisson", "constant"):
        raise BenchError(f"llamafleet_bench_arrivals must be poisson or constant, got {arrivals!r}")
    routing = str(values.get("routing") or "pool")
    if routing not in ("pool", "random"):
        raise BenchError(f"llamafleet_bench_routing must be pool (wait for the first free slot of the group, as the "
                         f"gateway's pools do) or random, got {routing!r}")
    embed_rate = _number("embed_rate_per_min", values.get("embed_rate_per_min"), allow_zero=True)
    warmup = _number("warmup_requests", values.get("warmup_requests"), int, allow_zero=True)
    return BenchConfig(
        rate_per_min=rate, concurrency=concurrency, duration_s=duration, requests=count,
        prompt_tokens=_number("prompt_tokens", values.get("prompt_tokens"), int) or PRESET["prompt_tokens"],
        reply_tokens=_number("reply_tokens", values.get("reply_tokens"), int) or PRESET["reply_tokens"],
        embed_rate_per_min=PRESET["embed_rate_per_min"] if embed_rate is None else embed_rate,
        embed_tokens=_number("embed_tokens", values.get("embed_tokens"), int) or PRESET["embed_tokens"],
        arrivals=arrivals, warmup_requests=2 if warmup is None else warmup,
        timeout_s=_number("timeout_s", values.get("timeout_s")) or 120.0,
        ignore_eos=bool(values.get("ignore_eos", True)),
        seed=int(values.get("seed") or 0),
        users=_number("users", values.get("users"), int) or 10,
        characters=_number("characters", values.get("characters"), int) or 4,
        routing=routing,
        probe=bool(values.get("probe", True)),
        turns=_number("turns", values.get("turns"), int, allow_zero=True) or 0,
        conversation_header=bool(values.get("conversation_header", True)),
    )


def groups(servers: list[dict], gateway_models: list[dict] | None, wanted: list[str] | None) -> list[dict]:
    """The model groups a run sends to: [{name, role, model, servers: [server names]}].

    With a gateway, the groups are its aliases (llamafleet_gateway_models); without, one group per
    (model, role) of the fleet's servers. wanted (llamafleet_bench_models) narrows them, by alias or model.
    """
    out = []
    if gateway_models:
        for entry in gateway_models:
            members = [s["name"] for s in servers if s["model"] == entry["model"] and s["role"] == entry.get("role", "chat")]
            out.append({"name": entry["alias"], "role": entry.get("role", "chat"), "model": entry["model"], "servers": members})
    else:
        seen: dict[tuple[str, str], dict] = {}
        for s in servers:
            key = (s["model"], s["role"])
            if key not in seen:
                seen[key] = {"name": s["model"] if s["role"] == "chat" else f"{s['model']}-{s['role']}",
                             "role": s["role"], "model": s["model"], "servers": []}
                out.append(seen[key])
            seen[key]["servers"].append(s["name"])
    if wanted:
        known = {g["name"] for g in out} | {g["model"] for g in out}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise BenchError(f"llamafleet_bench_models: unknown model {', '.join(map(str, unknown))}; known: "
                             f"{', '.join(sorted(known))}")
        out = [g for g in out if g["name"] in wanted or g["model"] in wanted]
    if not any(g["role"] == "chat" for g in out):
        raise BenchError("llamafleet_bench_models selects no chat model group; the bench needs at least one")
    return out


# -- prompts -------------------------------------------------------------------------------------------
WORDS = ("the a and to of I you it in that is was he she for on with as his her at be they this have "
         "from or one had by but not what all were we when your can said there use each which do how their "
         "if will up other about out many then them these so some would make like him into time has look two "
         "more go see no way could people my than first been call who its now find long down day did get come "
         "made may part over new sound take only little work know place year live me back give most very after "
         "thing our just name good sentence man think say great where help through much before line right too "
         "mean old any same tell boy follow came want show also around form three small set put end does another "
         "well large must big even such because turn here why ask went men read need land different home us move "
         "try kind hand picture again change off play spell air away animal house point page letter mother answer "
         "found study still learn should world high every near add food between own below country plant last "
         "school father keep tree never start city earth eye light thought head under story saw left few while "
         "along might close something seem next hard open example begin life always those both paper together got "
         "group often run important until children side feet car mile night walk white sea began grow took river "
         "four carry state once book hear stop without second later miss idea enough eat face watch far real almost "
         "let above girl sometimes mountain cut young talk soon list song being leave family smile laugh gentle "
         "quiet warm rain garden coffee evening morning remember dream heart voice window").split()
NAMES = ("Aria", "Brennan", "Cleo", "Dorian", "Elise", "Finn", "Greta", "Hugo", "Ines", "Jasper", "Kira", "Lio")
TRAITS = ("kind", "curious", "sarcastic", "shy", "brave", "playful", "wise", "stubborn", "gentle", "witty")


def _prose(rng: random.Random, words: int) -> str:
    out, sentence = [], []
    for _word in range(max(words, 1)):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(6, 14):
            out.append(" ".join(sentence).capitalize() + rng.choice((".", ".", ".", "!", "?")))
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


@dataclass
class PromptSource:
    """Companion-chat shaped prompts: a character card as the system prompt (shared by every user of
    that character: the prefix prompt caching reuses), the user's recent turns, and a new message.

    turns = 0: each of `users` users sends a fixed-length prompt whose history repeats word for word.
    turns > 0: `users` conversations run side by side; each lasts `turns` requests whose history
    grows by one exchange per turn (the user's message and a reply of reply_tokens), then that user
    starts a new conversation (new key, same character card). Turn 1 is the card and a first message.
    The conversations take their turns in a seeded random order (conversation_of), not in rotation.

    Deterministic for a seed. Lengths are in words, converted with tokens_per_word, which
    calibrate() corrects from what the servers counted.
    """
    prompt_tokens: int
    embed_tokens: int
    seed: int = 0
    users: int = 10
    characters: int = 4
    tokens_per_word: float = TOKENS_PER_WORD
    turns: int = 0
    reply_tokens: int = 64
    _cards: list[str] = field(default_factory=list)
    _turn: list[int] = field(default_factory=list)

    def __post_init__(self):
        rng = random.Random(self.seed)
        card_words = int(self.prompt_tokens * 0.4 / TOKENS_PER_WORD)  # fixed once: the cached prefix stays put
        self._cards = []
        for i in range(self.characters):
            name = NAMES[i % len(NAMES)]
            traits = ", ".join(rng.sample(TRAITS, 3))
            self._cards.append(f"You are {name}, a {traits} companion. Stay in character, reply warmly and in the "
                               f"first person. Persona: {_prose(rng, card_words // 2)} Scenario: {_prose(rng, card_words // 2)}")
        self._turn = [0] * self.users

    def chat(self, index: int) -> tuple[int, list[dict]]:
        """The messages of request number index: (user, messages)."""
        user, _conversation, messages = self.chat_turn(index)
        return user, messages

    def conversation_of(self, index: int) -> int:
        """The user (conversation) that request number index continues, with turns > 0.

        Rounds of `users` requests, each taking every conversation once in an order shuffled by the
        seed and the round's number: reproducible, a pure function of the index, every conversation
        advances at the same pace (at most 2 x users - 2 requests between two of its turns), and no
        conversation has a fixed place in the order. A strict rotation (user = index % users) would
        make a load-only pool that alternates between two idle servers send every conversation to
        the same server by accident whenever the number of conversations is even: affinity that real
        users, arriving in no fixed order, do not give it.
        """
        order = list(range(self.users))
        random.Random(f"{self.seed}-order-{index // self.users}").shuffle(order)
        return order[index % self.users]

    def chat_turn(self, index: int) -> tuple[int, str | None, list[dict]]:
        """Request number index: (user, conversation key or None without turns, messages)."""
        user = self.conversation_of(index) if self.turns > 0 else index % self.users
        self._turn[user] += 1
        if self.turns > 0:
            return self._conversation_turn(user, self._turn[user])
        rng = random.Random(f"{self.seed}-{user}-{self._turn[user]}")
        card = self._cards[user % self.characters]
        card_tokens = len(card.split()) * self.tokens_per_word
        history_words = max(int((self.prompt_tokens - card_tokens) / self.tokens_per_word) - 40, 0)
        messages = [{"role": "system", "content": card}]
        # the user's earlier turns: the same words for this user every time (seeded by user only), so
        # the conversation prefix repeats as it does in a real chat
        history_rng = random.Random(f"{self.seed}-{user}")
        remaining = history_words
        while remaining > 0:
            for role in ("user", "assistant"):
                words = min(remaining, history_rng.randint(20, 60)) if remaining > 0 else 0
                if words:
                    messages.append({"role": role, "content": _prose(history_rng, words)})
                remaining -= words
        if messages[-1]["role"] == "user":
            messages.append({"role": "assistant", "content": _prose(history_rng, 8)})
        messages.append({"role": "user", "content": _prose(rng, 30)})
        return user, None, messages

    def _conversation_turn(self, user: int, count: int) -> tuple[int, str, list[dict]]:
        number, turn = divmod(count - 1, self.turns)  # the user's conversation number, its turn (0-based)
        key = f"s{self.seed}-u{user}-c{number}"
        messages = [{"role": "system", "content": self._cards[user % self.characters]}]
        reply_words = max(int(self.reply_tokens / self.tokens_per_word), 1)
        for earlier in range(turn + 1):
            rng = random.Random(f"{key}-{earlier}")  # the same words for a turn every time it is repeated
            messages.append({"role": "user", "content": _prose(rng, 30)})
            if earlier < turn:  # what the companion answered then (a stand-in: the bench discards replies)
                messages.append({"role": "assistant", "content": _prose(rng, reply_words)})
        return user, key, messages

    def embed(self, index: int) -> str:
        rng = random.Random(f"{self.seed}-embed-{index}")
        return _prose(rng, max(int(self.embed_tokens / self.tokens_per_word), 1))

    def calibrate(self, target_tokens: float, measured_tokens: float) -> None:
        """Scale future prompts so that what the server counts matches the target length."""
        if target_tokens > 0 and measured_tokens > 0:
            self.tokens_per_word *= measured_tokens / target_tokens


# -- arrivals ------------------------------------------------------------------------------------------
def arrival_times(rate_per_min: float, duration_s: float | None, count: int | None, arrivals: str, seed: int) -> list[float]:
    """Send times (seconds from the start) of an open-loop run: Poisson or evenly spaced.

    A short run of free Poisson draws often offers a rate far from the stated one (12/min for 60 s
    gives 6 to 19 requests in 95% of runs); the count is therefore fixed to the
    stated rate x duration, and the Poisson times are the ones a Poisson process has given that
    count: independent uniform times, sorted.
    """
    if rate_per_min <= 0:
        return []
    rate = rate_per_min / 60.0
    n = count if count is not None else max(int(round(rate * duration_s)), 1)
    span = duration_s if duration_s is not None else n / rate
    if arrivals == "constant":
        return [i / rate for i in range(n)]
    rng = random.Random(f"arrivals-{seed}-{float(rate_per_min)}")
    return sorted(rng.uniform(0.0, span) for _arrival in range(n))


# -- metrics -------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def tpot(record: dict) -> float | None:
    """Time per output token after the first, as vLLM defines it."""
    n = record.get("completion_tokens") or 0
    if not record.get("ok") or n < 2 or record.get("ttft") is None:
        return None
    return (record["latency"] - record["ttft"]) / (n - 1)


def _dist(values: list[float]) -> dict:
    out = {"mean": (sum(values) / len(values)) if values else None}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    return out


def summarize(records: list[dict], window_s: float | None = None, arrival_span_s: float | None = None) -> dict:
    """Figures of a set of measured requests (one group, one server or all).

    window_s: first arrival to last completion (throughputs); arrival_span_s: the time over which
    requests arrived (the offered rate), the window when not given.
    """
    done = [r for r in records if r.get("ok")]
    errors = [r for r in records if not r.get("ok")]
    if window_s is None:
        starts = [r["arrival"] for r in records]
        ends = [r["arrival"] + r["latency"] for r in records if r.get("latency") is not None]
        window_s = (max(ends) - min(starts)) if starts and ends else 0.0
    chats = [r for r in done if r["kind"] == "chat"]
    out_tokens = sum(r.get("completion_tokens") or 0 for r in chats)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in done)
    itl = [gap for r in chats for gap in r.get("itl", [])]
    tpots = [t for t in (tpot(r) for r in chats) if t is not None]
    busy = [(r["server_prompt_ms"] + r["server_predicted_ms"]) / 1000.0 for r in chats
            if r.get("server_prompt_ms") is not None and r.get("server_predicted_ms") is not None]
    per = max(window_s, 1e-9)
    return {
        "requests": len(records), "completed": len(done), "errors": len(errors), "window_s": window_s,
        "request_throughput": len(done) / per,
        "arrival_rate_per_min": 60.0 * len(records) / max(arrival_span_s or window_s, 1e-9),
        "output_throughput": out_tokens / per, "total_token_throughput": (out_tokens + in_tokens) / per,
        "prompt_tokens": in_tokens, "completion_tokens": out_tokens,
        "prompt_tokens_mean": (sum(r.get("prompt_tokens") or 0 for r in chats) / len(chats)) if chats else None,
        "completion_tokens_mean": (out_tokens / len(chats)) if chats else None,
        "ttft": _dist([r["ttft"] for r in chats if r.get("ttft") is not None]),
        "itl": _dist(itl),
        "tpot": _dist(tpots),
        "e2el": _dist([r["latency"] for r in done]),
        "decode_tps": _dist([1.0 / t for t in tpots if t > 0]),
        "slot_busy_s": _dist(busy), "slot_busy_total_s": sum(busy),
    }


# A chunk gap under BURST_GAP_S is two tokens delivered together; more than BURST_SHARE of them is a burst.
BURST_GAP_S = 0.002
BURST_SHARE = 0.25


# -- server-side figures -------------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, float]:
    """The llamacpp: samples of a Prometheus text page, without the prefix (labelled series are skipped)."""
    return {name.removeprefix("llamacpp:"): value for name, value in prometheus_samples(text).items()
            if name.startswith("llamacpp:")}


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """What a server did between two scrapes: counters' differences and the derived rates."""
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    decodes = d("n_decode_total")
    busy = (after.get("n_busy_slots_per_decode", 0.0) * after.get("n_decode_total", 0.0)
            - before.get("n_busy_slots_per_decode", 0.0) * before.get("n_decode_total", 0.0))
    prompt_s, predicted_s = d("prompt_seconds_total"), d("tokens_predicted_seconds_total")
    return {
        "prompt_tokens": d("prompt_tokens_total"), "prompt_tokens_cached": d("prompt_tokens_cached_total"),
        "tokens_predicted": d("tokens_predicted_total"), "prompt_seconds": prompt_s, "predicted_seconds": predicted_s,
        "decode_calls": decodes, "busy_slots_per_decode": busy / decodes if decodes > 0 else None,
        "prompt_tps": d("prompt_tokens_total") / prompt_s if prompt_s > 0 else None,
        "decode_tps_per_stream": d("tokens_predicted_total") / predicted_s if predicted_s > 0 else None,
    }


def stream_warnings(records: list[dict], server_side: dict) -> list[str]:
    """Servers whose streamed tokens reached the client in bursts: many chunk gaps too short to be a decode step.

    A server that decodes one token every `step` seconds per stream cannot send two tokens of a stream
    2 ms apart, so a quarter of such gaps means something between it and the client (a proxy coalescing
    small writes) delivered several at once: the client's ITL then measures that path, not the server.
    """
    out = []
    gaps_by: dict[str, list[float]] = {}
    for r in records:
        if r.get("ok") and r.get("kind") == "chat" and r.get("server"):
            gaps_by.setdefault(r["server"], []).extend(r.get("itl", []))
    for name, gaps in sorted(gaps_by.items()):
        tps = (server_side.get(name) or {}).get("decode_tps_per_stream")
        if len(gaps) < 20 or not tps or 1.0 / tps < 2 * BURST_GAP_S:
            continue
        short = sum(g < BURST_GAP_S for g in gaps) / len(gaps)
        if short > BURST_SHARE:
            out.append(f"{name}: {short:.0%} of the gaps between streamed chunks were under {BURST_GAP_S * 1000:.0f} ms, "
                       f"but the server decoded a token every {1000.0 / tps:.0f} ms per stream: its stream reached the "
                       f"client in bursts (a proxy coalescing small writes; the pools set HAProxy's option http-no-delay). "
                       f"Its ITL figures measure that path, not the server.")
    return out


# -- the plan beside the bench -------------------------------------------------------------------------
def plan_speeds(plan_result: dict, group: dict, prompt_tokens: float, alone: dict | None = None) -> list:
    """The plan's per-server speeds of a group's servers, its TTFT rescaled to this prompt length.

    plan.json's speeds were computed for the inventory's workload; a server's prefill rate and its
    decode speed do not depend on the load, so TTFT alone = prompt / prefill + one decode step.
    """
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Speed

    out = []
    by_name = {s["name"]: s for s in plan_result.get("servers", [])}
    for name in group["servers"]:
        sp = by_name[name]["speed"] if name in by_name else None
        if not sp:
            continue
        # measured alone: the plan's speeds scaled to them (the plan's ratio of batched to single
        # decode is kept: how slots share a step is part of the load model under test)
        seen = (alone or {}).get(name) or {}
        k_decode = seen["decode_tps"] / sp["decode_tps"] if seen.get("decode_tps") else 1.0
        prefill = seen.get("prefill_tps") or sp["prefill_tps"]
        decode = sp["decode_tps"] * k_decode
        ttft = prompt_tokens / prefill + 1.0 / decode
        out.append(Speed(decode, prefill, ttft, sp["batch_decode_tps"] * k_decode, int(sp["slots"])))
    return out


def predictions(plan_result: dict, group: dict, rate_per_min: float, prompt_tokens: float, reply_tokens: float,
                alone: dict | None = None) -> dict | None:
    """The plan's figures for one chat group at the load the bench measured (same rate and lengths).

    alone: per server {prefill_tps, decode_tps} measured alone; when given, the plan's load model
    runs on those speeds instead of its roofline ones.
    """
    from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import workload

    speeds = plan_speeds(plan_result, group, prompt_tokens, alone)
    if not speeds or rate_per_min <= 0:
        return None
    result = workload(group["model"], rate_per_min, int(round(prompt_tokens)), int(round(reply_tokens)), speeds)
    out = result.to_dict()
    out["ttft_alone_s"] = sum(s.ttft_s for s in speeds) / len(speeds)
    return out


def comparison(predicted: dict | None, measured: dict, slots: int) -> list[dict]:
    """Rows of plan vs bench for one group: figure, predicted, measured, measured/predicted."""
    if not predicted:
        return []
    # as the plan defines it: arrival rate x mean slot hold time / slots
    busy = measured["slot_busy_s"]["mean"]
    util = measured["arrival_rate_per_min"] / 60.0 * busy / slots if slots and busy is not None else None
    rows = [
        ("TTFT p50 (s)", predicted.get("ttft_p50_s"), measured["ttft"]["p50"]),
        ("TTFT p95 (s)", predicted.get("ttft_p95_s"), measured["ttft"]["p95"]),
        ("tokens/s per request", predicted.get("tokens_per_s_per_request"), measured["decode_tps"]["mean"]),
        ("slot busy per request (s)", predicted.get("service_s"), measured["slot_busy_s"]["mean"]),
        ("utilisation", predicted.get("utilisation"), util),
    ]
    out = []
    for name, p, m in rows:
        if p is None and predicted.get("stable") is False:
            p = math.inf  # the plan says the queue grows without bound at this load
        ratio = (m / p) if (p and m is not None and 0 < p < math.inf) else None
        out.append({"figure": name, "predicted": p, "measured": m, "ratio": ratio,
                    "off": ratio is not None and abs(ratio - 1.0) > 0.25})
    return out


# -- report --------------------------------------------------------------------------------------------
def _f(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "unbounded"
    return f"{value:,.{digits}f}{unit}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def figures_row(name: str, s: dict) -> list[str]:
    return [name, str(s["requests"]), str(s["errors"]), _f(s["request_throughput"] * 60, 1),
            _f(s["output_throughput"], 1), _f(s["ttft"]["p50"]), _f(s["ttft"]["p95"]), _f(s["ttft"]["p99"]),
            _f(s["itl"]["p50"] and s["itl"]["p50"] * 1000, 0), _f(s["itl"]["p95"] and s["itl"]["p95"] * 1000, 0),
            _f(s["itl"]["p99"] and s["itl"]["p99"] * 1000, 0), _f(s["tpot"]["p50"] and s["tpot"]["p50"] * 1000, 0),
            _f(s["decode_tps"]["p50"], 1), _f(s["e2el"]["p50"]), _f(s["e2el"]["p95"])]


FIGURE_HEADERS = ["", "requests", "errors", "req/min", "output tok/s", "TTFT p50 s", "TTFT p95 s", "TTFT p99 s",
                  "ITL p50 ms", "ITL p95 ms", "ITL p99 ms", "TPOT p50 ms", "tok/s per request p50", "E2E p50 s", "E2E p95 s"]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in rows]


def simulated_note(hosts: list[str]) -> str:
    """The sentence every report measured on simulated servers starts with (bench and tune)."""
    return (f"**Measured on simulated servers** (llamafleet_backend: sim on {', '.join(hosts)}): "
            "they sleep what the plan predicts for the declared cards, so these figures measure the fleet "
            "between the client and the servers (gateway, pools, routing, queueing, prompt cache), not the "
            "cards. See docs/sim.md.")


def render_markdown(result: dict) -> str:
    """report.md of one run (result: what bench writes to results.json, less the per-request list)."""
    cfg, load = result["config"], result["load"]
    lines = ["# llamafleet bench", "",
             f"Started {result['started']} UTC against {result['target']} ({result['mode']} mode). "
             + (f"Open loop: {cfg['arrivals']} arrivals at {cfg['rate_per_min']:g} chat requests/min"
                if cfg["mode"] == "rate" else f"Closed loop: {cfg['concurrency']} concurrent chat requests")
             + f", {cfg['embed_rate_per_min']:g} embedding requests/min; prompts ~{cfg['prompt_tokens']} tokens "
               f"(measured mean {_f(load['prompt_tokens_mean'], 0)}), replies {'exactly' if cfg['ignore_eos'] else 'up to'} "
               f"{cfg['reply_tokens']} tokens, embedding inputs ~{cfg['embed_tokens']} tokens; "
             + f"{load['warmup']} warm-up request(s) excluded; measured window {_f(load['window_s'], 1)} s."
             + (f" Controller load average {load['load_average'][0]} at the start, {load['load_average'][1]} at the end "
                f"(on a machine that also runs the servers, anything else running slows them)." if load.get("load_average") else ""),
             ""]
    if result.get("simulated_hosts"):
        lines += [simulated_note(result["simulated_hosts"]), ""]
    if result.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in result["warnings"]] + [""]
    lines += ["## Figures", "", "Per model group and per server (the server that answered, see docs/bench.md). "
              "TTFT counts from the request's arrival, so time waiting for a slot is in it.", ""]
    rows = [figures_row("**all**", result["summary"]["all"])]
    rows += [figures_row(f"group {name}", s) for name, s in result["summary"]["groups"].items()]
    rows += [figures_row(f"server {name}", s) for name, s in result["summary"]["servers"].items()]
    lines += _table(FIGURE_HEADERS, rows)

    lines += ["", "## Server-side figures (/metrics, same window)", "",
              "Counters of each server's `/metrics` (`llamacpp:`), scraped before the measured requests and after "
              "the last one finished, beside what the client counted for the requests that server answered.", ""]
    srows = []
    for name, side in result["server_side"].items():
        client = result["summary"]["servers"].get(name)
        if side.get("error"):
            srows.append([name, side["error"], "-", "-", "-", "-", "-", "-", "-"])
            continue
        srows.append([name, _f(side["prompt_tokens"] + side["prompt_tokens_cached"], 0),
                      _f(client["prompt_tokens"], 0) if client else "0",
                      _f(side["prompt_tokens_cached"], 0), _f(side["tokens_predicted"], 0),
                      _f(client["completion_tokens"], 0) if client else "0",
                      _f(side["prompt_tps"], 1), _f(side["decode_tps_per_stream"], 1), _f(side["busy_slots_per_decode"], 2)])
    lines += _table(["server", "prompt tokens (server: processed + cached)", "prompt tokens (client)", "of them cached",
                     "tokens predicted (server)", "completion tokens (client)", "prompt tok/s", "decode tok/s per stream",
                     "busy slots per decode"], srows)
    sides = [side for side in result["server_side"].values() if not side.get("error")]
    answered = result["summary"]["all"].get("completed") or 0
    if sides and answered:
        prefilled = sum(side["prompt_tokens"] for side in sides)
        cached = sum(side["prompt_tokens_cached"] for side in sides)
        lines += ["", f"Prompt tokens per answered request: {prefilled / answered:.0f} prefilled, {cached / answered:.0f} "
                  f"reused from the prompt cache ({cached / max(prefilled + cached, 1):.0%} of all prompt tokens)."]

    if result.get("alone"):
        lines += ["", "Each chat server alone (one request, no prompt cache, before the measured phase; llama-server's "
                  "timings) beside the plan's roofline figures:", ""]
        plan_by = {s["name"]: s["speed"] for s in (result.get("plan_servers") or [])}
        arows = []
        for name, a in result["alone"].items():
            sp = plan_by.get(name) or {}
            arows.append([name, _f(a.get("prefill_tps"), 1), _f(sp.get("prefill_tps"), 1), _f(a.get("decode_tps"), 1),
                          _f(sp.get("decode_tps"), 1)] if "error" not in a else [name, a["error"], "-", "-", "-"])
        lines += _table(["server", "prompt tok/s alone", "plan", "decode tok/s alone", "plan"], arows)
    lines += ["", "## The plan beside the bench", "",
              "The plan's model (docs/plan.md) evaluated at the load this run measured: its arrival rate and mean "
              "prompt and reply lengths. Ratio = measured / predicted; **bold** when off by more than 25%.", ""]
    crow = []
    for name, rows_ in result["comparison"].items():
        for r in rows_:
            ratio = _f(r["ratio"], 2)
            crow.append([name, r["figure"], _f(r["predicted"], 2), _f(r["measured"], 2), f"**{ratio}**" if r["off"] else ratio])
    lines += _table(["group", "figure", "plan", "bench", "ratio"], crow) if crow else ["No chat group has a plan prediction."]

    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {count} x {message}" for message, count in result["errors"].items()]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
    lines += ["", "Every request is in `results.json` (times in seconds from the start of the run)."]
    return "\n".join(lines) + "\n"


def error_counts(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if not r.get("ok"):
            key = str(r.get("error") or "unknown")[:200]
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def server_from_headers(headers: dict, servers: list[dict]) -> str | None:
    """Which fleet server answered a gateway request.

    The pool (HAProxy) names it in X-Llamafleet-Server (its server name, `<host>.<server>` or
    `<server>`); LiteLLM names the upstream it called in x-litellm-model-api-base (a URL).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    # LiteLLM passes an upstream's response headers on with the prefix llm_provider-
    name = lower.get("x-llamafleet-server") or lower.get("llm_provider-x-llamafleet-server")
    if name:
        for s in servers:
            if name in (s["name"], f"{s.get('host')}.{s['name']}"):
                return s["name"]
    base = lower.get("x-litellm-model-api-base")
    if base:
        base = base.rstrip("/").removesuffix("/v1")
        for s in servers:
            if s["url"].rstrip("/") == base:
                return s["name"]
    return None


def assemble(cfg: BenchConfig, target: str, mode: str, started: str, group_list: list[dict], servers: list[dict],
             run: dict, plan_result: dict | None) -> dict:
    """results.json of one run: settings, every request, the figures, the servers' counters, the plan."""
    records = run["records"]
    measured = [r for r in records if not r["warmup"]]
    start, end = run["window"]
    window = end - start
    by_group = {g["name"]: [r for r in measured if r["group"] == g["name"]] for g in group_list}
    by_server: dict[str, list[dict]] = {}
    for r in measured:
        by_server.setdefault(r["server"] or "(unknown)", []).append(r)
    span = run.get("arrival_span_s")
    summary = {"all": summarize(measured, window, span),
               "groups": {name: summarize(rs, window, span) for name, rs in by_group.items()},
               "servers": {name: summarize(rs, window, span) for name, rs in sorted(by_server.items())}}
    server_side = {}
    for s in servers:
        before, after = run["metrics_before"].get(s["name"], {}), run["metrics_after"].get(s["name"], {})
        if "error" in before or "error" in after:
            server_side[s["name"]] = {"error": before.get("error") or after.get("error")}
        else:
            server_side[s["name"]] = metrics_delta(before, after)
    slots = {s["name"]: int(s.get("slots") or 1) for s in servers}
    predicted, compared = {}, {}
    for g in group_list:
        s = summary["groups"][g["name"]]
        if g["role"] != "chat" or not plan_result or not s["completed"]:
            continue
        load = (s["arrival_rate_per_min"], s["prompt_tokens_mean"] or cfg.prompt_tokens, s["completion_tokens_mean"] or cfg.reply_tokens)
        predicted[g["name"]] = predictions(plan_result, g, *load)
        n_slots = sum(slots.get(n, 1) for n in g["servers"])
        compared[g["name"]] = comparison(predicted[g["name"]], s, n_slots)
        alone = {n: v for n, v in (run.get("alone") or {}).items() if "error" not in v}
        if alone:
            predicted[g["name"] + " (speeds measured alone)"] = p_alone = predictions(plan_result, g, *load, alone=alone)
            compared[g["name"] + " (speeds measured alone)"] = comparison(p_alone, s, n_slots)
    prompt_means = [r.get("prompt_tokens") for r in measured if r["kind"] == "chat" and r.get("prompt_tokens")]
    config_out = dict(cfg.__dict__, mode=cfg.mode)
    return {
        "started": started, "target": target, "mode": mode, "config": config_out,
        "load": {"warmup": sum(r["warmup"] for r in records), "window_s": window, "measured": len(measured),
                 "prompt_tokens_mean": sum(prompt_means) / len(prompt_means) if prompt_means else None,
                 "tokens_per_word": run.get("tokens_per_word"), "arrival_span_s": span,
                 "load_average": run.get("load_average")},
        "groups": group_list, "servers": servers,
        # hosts whose servers are simulated (llamafleet_backend: sim): every figure of the report says so
        "simulated_hosts": sorted({sv["host"] for sv in servers if sv.get("backend") == "sim"}),
        "plan_servers": [{"name": p["name"], "speed": p["speed"]} for p in (plan_result or {}).get("servers", [])],
        "summary": summary, "server_side": server_side,
        "predictions": predicted, "comparison": compared, "alone": run.get("alone") or {}, "errors": error_counts(measured),
        "warnings": stream_warnings(measured, server_side), "requests": records,
    }
