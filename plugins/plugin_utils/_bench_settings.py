# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bench settings: the load a run sends (rate or concurrency, lengths, conversations), validated, and
the model groups it sends to. A bad setting is a BenchError naming the variable and the fix."""
from __future__ import annotations

import math
from dataclasses import dataclass

PRESET = {  # the first user's load: 30 chat requests/min, ~500-token prompts, up to 512-token replies
    "rate_per_min": 30.0, "prompt_tokens": 500, "reply_tokens": 512, "embed_rate_per_min": 30.0,
    "embed_tokens": 64,
}


class BenchError(ValueError):
    """A bench setting that cannot work; the message names the variable and the fix."""


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
