# Copyright: llamafleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Speed model: roofline for decode and prefill, queueing for a declared workload.

Decode is memory-bound: every generated token reads the offloaded weights and the KV cache
written so far, so tok/s <= bandwidth / bytes per token. Batched decode with several slots reads
the weights once per step for all of them. Prefill is compute-bound: 2 x params FLOP per prompt
token at the integer throughput llama.cpp's quantized matmuls reach. Efficiency factors are the
ones facts.md derives from public P40 / GTX 1080 measurements (decode 55-65% of peak bandwidth,
prefill 25-30% of dp4a peak); they are estimates, which the bench playbook measures against.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_gguf import ModelInfo
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._memory import MIB, ServerMemory

DECODE_EFFICIENCY = 0.6       # share of peak bandwidth a decode step achieves
# facts.md fits eta = 0.27 with all 8.03 B parameters of Llama-3.1-8B; per block parameter (6.98 B,
# the ones a prompt token is multiplied through) the same P40 data give 0.235.
PREFILL_EFFICIENCY = 0.235    # share of peak integer throughput prefill achieves (dp4a / MMQ)
PCIE_GBS = 3.0                # effective host->device copy rate for CPU-resident layers (x4-x16 gen3 riser mix)

# Single-stream decode on CUDA: t_token = W / BW_eff + KV / BW_eff + n_layer x (C0 + C1 / SMs)
# (x GRAPHS with CUDA graphs, compute capability >= 7.0). A fast card does not reach its bandwidth
# at batch 1, a slow one nearly does: BW_eff = BW x A / (1 + BW / B0). Fitted to llama-bench tg128
# (docs/plan.md "Speed that holds on fast and slow cards"):
#   Tesla P40 (347.1 GB/s, 30 SMs): 7B Q4_0 56.5 tok/s, Q5_0 48.2 (PR #4766): GPU weights 3.750 and
#     4.560 GB -> 0.810 GB per 3.048 ms: BW_eff 265.8 GB/s; fixed 17.70 - 3.750/265.8 = 3.59 ms.
#   H200 (4800 GB/s, 132 SMs): 8B Q4_K_M 245.2, Q6_K 192.2 tok/s (tests/data/cuda-truth): 4.617 and
#     6.157 GB -> 1.540 GB per 1.125 ms: BW_eff 1368.6 GB/s; fixed 0.704 ms with CUDA graphs,
#     1.177 ms without (230.5 / 185.4 tok/s with GGML_CUDA_DISABLE_GRAPHS=1).
#   BW_eff through both: 13.829 (1 + 347.1/B0) = 5.149 (1 + 4800/B0) -> B0 = 2294, A = 0.8816.
#   Fixed per layer: 3.59 ms / 32 = 112.2 us = C0 + C1/30; 1.177 / 32 = 36.8 us = C0 + C1/132
#   -> C1 = 2927 us x SM, C0 = 14.6 us; graphs 0.704 / 1.177 = 0.598.
BW_A, BW_B0_GBS = 0.8816, 2294.0
FIXED_C0_S, FIXED_C1_S = 14.6e-6, 2927e-6
GRAPHS_FACTOR = 0.598
# Each further sequence in a decode step adds this share of the weights' read time (H200, Q4_K_M,
# llama-batched-bench: steps of 4.12 ms alone and 9.60 ms for 8 sequences: 5.48 / (7 x 3.374 ms)).
PER_SEQUENCE_SHARE = 0.232


@dataclass
class Device:
    """Throughput figures of the device a server runs on.

    GPU figures are peak specifications, scaled by the efficiencies above. CPU figures
    (llamafleet_host_cpu) are declared as what the host achieves, measured: efficiency 1.
    """
    kind: str                  # "cuda" or "cpu"
    bandwidth_gbs: float
    compute_tops: float        # quantized-matmul throughput (INT8 or FP32), TOPS
    host_bandwidth_gbs: float  # CPU memory bandwidth, for layers left on the CPU (effective)
    sms: int | None = None     # streaming multiprocessors (cuda): the per-token fixed cost scales with 1/SMs
    cuda_graphs: bool = False  # compute capability >= 7.0: llama.cpp replays decode steps as CUDA graphs

    def effective_bandwidth_gbs(self) -> float:
        """What a batch-1 decode step reads per second (BW_A, BW_B0_GBS above); the CPU's is declared."""
        if self.kind != "cuda":
            return self.bandwidth_gbs
        if self.sms is None:  # no SM count: the old flat efficiency
            return self.bandwidth_gbs * DECODE_EFFICIENCY
        return self.bandwidth_gbs * BW_A / (1 + self.bandwidth_gbs / BW_B0_GBS)

    def fixed_step_s(self, n_layer: int) -> float:
        """Per-token time that does not scale with bytes: kernel launches and small kernels."""
        if self.kind != "cuda" or self.sms is None:
            return 0.0
        return n_layer * (FIXED_C0_S + FIXED_C1_S / self.sms) * (GRAPHS_FACTOR if self.cuda_graphs else 1.0)

    @property
    def decode_efficiency(self) -> float:
        return DECODE_EFFICIENCY if self.kind == "cuda" else 1.0

    @property
    def prefill_efficiency(self) -> float:
        return PREFILL_EFFICIENCY if self.kind == "cuda" else 1.0


@dataclass
class Speed:
    decode_tps: float          # one stream alone
    prefill_tps: float
    ttft_s: float              # for the workload's prompt (or 512 tokens)
    batch_decode_tps: float    # all slots decoding together (aggregate)
    slots: int
    source: str = "estimated"  # or "calibrated": measured on the host by calibrate.yml

    def to_dict(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def layer_params(model: ModelInfo) -> float:
    """Parameters of the repeated blocks: what every prompt token is multiplied through.

    token_embd is a row lookup and the output projection runs for the last token of each
    sequence only, so neither counts towards prefill FLOPs.
    """
    per_layer = (max(model.n_head) * model.head_dim_k * 2 * model.n_embd
                 + 2 * max(model.n_head_kv) * model.head_dim_k * model.n_embd
                 + 3 * model.n_embd * model.n_ff)
    return float(per_layer * model.n_layer)


def server_speed(model: ModelInfo, mem: ServerMemory, dev: Device, prompt_tokens: int = 512,
                 reply_tokens: int = 256) -> Speed:
    """Roofline speed of one server for one request alone and for all its slots together."""
    slots = mem.kv.n_seq if mem.kv else 1
    # weights read per decode step on each side (token_embd is a row lookup, not read whole)
    dev_w = mem.model * MIB if dev.kind == "cuda" else (
        model.weights_bytes - model.token_embd_bytes + (model.token_embd_bytes if model.tied_output else 0))
    host_w = 0.0
    if dev.kind == "cuda":
        host_w = max(mem.host_weights * MIB - model.token_embd_bytes, 0.0)
    avg_ctx = prompt_tokens + reply_tokens / 2
    kv_per_token = (mem.context * MIB / max(mem.kv.cells_base * mem.kv.streams, 1)) if mem.kv and mem.context else 0.0
    kv_read = kv_per_token * avg_ctx
    bw = dev.effective_bandwidth_gbs() * 1e9
    host_bw = dev.host_bandwidth_gbs * 1e9  # declared as measured: no efficiency factor
    t_dev = dev_w / bw
    t_weights = t_dev + host_w / host_bw + dev.fixed_step_s(model.n_layer)
    t_step1 = t_weights + kv_read / bw
    decode = 1.0 / t_step1
    # CUDA cards with an SM count: the share fitted to llama-batched-bench on the H200; other devices
    # (the CPU backend, measured on the lab in docs/bench.md): one more slot's matmul work per step
    extra = (PER_SEQUENCE_SHARE * t_dev if dev.kind == "cuda" and dev.sms is not None
             else shared_step_s(model, dev))
    t_stepn = t_weights + slots * kv_read / bw + (slots - 1) * extra
    batch = slots / t_stepn

    # prefill: 2 FLOP per block parameter per prompt token; with partial offload the GPU still
    # runs the big-batch matmuls, after CPU-resident weights cross PCIe once per ubatch
    flops_tok = 2 * layer_params(model)
    prefill = dev.compute_tops * 1e12 * dev.prefill_efficiency / max(flops_tok, 1.0)
    n_ubatch = mem.kv.n_ubatch if mem.kv else 512
    upload = math.ceil(prompt_tokens / max(n_ubatch, 1)) * host_w / (PCIE_GBS * 1e9) if host_w else 0.0
    ttft = prompt_tokens / prefill + upload + t_step1
    return Speed(decode, prompt_tokens / max(ttft - t_step1, 1e-9), ttft, batch, slots)


# -- slots sharing a server (measured against bench.yml: docs/bench.md) -----------------------------
# A decode step with n busy slots reads the weights once, but every slot's token is multiplied
# through them: each slot beyond the first adds its matmul work, at a fraction of the rate prefill
# reaches (a few columns do not get big-matmul efficiency). Fitted on the P40's batched decode
# (PR #7314, FA on: 52.6 / 96.8 / 115.5 / 147.5 tok/s in total at 1 / 2 / 4 / 8 sequences, i.e.
# about 5 ms more per step for each sequence: 24% of the prefill rate the plan assumes for that
# card) and on the lab's CPU (one thread: 2 slots decode at 0.5-0.65 of one alone, i.e. 50%).
SHARED_STEP_SHARE = {"cuda": 0.24, "cpu": 0.5}


def shared_step_s(model: ModelInfo, dev: Device) -> float:
    """Seconds one more busy slot adds to a decode step of a server."""
    rate = dev.compute_tops * 1e12 * dev.prefill_efficiency * SHARED_STEP_SHARE.get(dev.kind, 0.24)
    return 2 * layer_params(model) / max(rate, 1.0)


def stalled_decode_s(reply_tokens: float, stream_tps: float, others_per_s: float, prefill_s: float) -> float:
    """Decode time of a reply while the other slots of its server take new prompts.

    llama-server prefills a new prompt in the same steps as the other slots' decoding, so each
    prompt that starts on the server while a reply is being generated holds that reply for about
    the prompt's prefill time. With others_per_s such arrivals, D = R / tps + others_per_s x D x
    prefill_s, so D = R / tps / (1 - others_per_s x prefill_s).
    """
    busy = others_per_s * prefill_s
    if busy >= 1.0:
        return math.inf
    return reply_tokens / stream_tps / (1.0 - busy)


# -- queueing --------------------------------------------------------------------------------------
def binomial_pmf(n: int, k: int, p: float) -> float:
    """P(B = k), B ~ Binomial(n, p), in logs: math.comb(n, k) overflows a float from n ~ 1,030."""
    if p <= 0.0 or p >= 1.0:
        return 1.0 if k == (0 if p <= 0.0 else n) else 0.0
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load a = lambda/mu."""
    if offered >= servers:
        return 1.0
    term = 1.0
    total = 1.0
    for k in range(1, servers):
        term *= offered / k
        total += term
    term *= offered / servers
    last = term * servers / (servers - offered)
    return last / (total + last)


@dataclass
class WorkloadResult:
    model: str
    requests_per_minute: float
    slots: int
    service_s: float
    utilisation: float
    ttft_p50_s: float
    ttft_p95_s: float
    tokens_per_s_per_request: float
    stable: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) and math.isfinite(v) else
                    (None if isinstance(v, float) else v)) for k, v in self.__dict__.items()}


def busy_beside(slots: int, n_servers: int, offered: float) -> float:
    """Expected busy slots on the server of a request being served (itself included).

    The pool is the M/M/c queue of ``workload`` (c = all slots): m requests are in service with
    probability P(m) (Erlang's distribution; m = c whenever any request waits). The pools route by
    least connections, so m requests spread evenly: r = m mod S servers hold q + 1 = m // S + 1,
    the others q. A request in service sits on a server with k busy with probability k / m, so it
    sees (r (q + 1)^2 + (S - r) q^2) / m busy, and a random request in service sees m with
    probability m P(m) / sum m P(m).
    """
    if offered >= slots:
        return slots / n_servers
    term, weights = 1.0, []
    for m in range(1, slots + 1):
        term *= offered / m                                   # a^m / m!
        weights.append(term / (1 - offered / slots) if m == slots else term)
    total = seen = 0.0
    for m, w in enumerate(weights, start=1):
        q, r = divmod(m, n_servers)
        total += m * w
        seen += w * (r * (q + 1) ** 2 + (n_servers - r) * q ** 2)
    return seen / total if total else 1.0


def workload(model_name: str, rpm: float, prompt_tokens: int, reply_tokens: int,
             servers: list[Speed]) -> WorkloadResult:
    """Expected utilisation and TTFT of one model's servers under Poisson arrivals.

    All slots of all servers of the model form one pool (slot-aware routing: a request waits for
    the first free slot anywhere). A slot's service time is its prefill plus reply_tokens at the
    per-stream speed it gets beside the other busy slots of its server: alone at decode_tps, with
    all n slots busy at batch_decode_tps / n, linear in between (each busy slot adds its share of
    a step). How many are busy beside it follows from the load (busy_beside), which depends on the
    service time: the two are solved together (a fixed point, reached from below).
    """
    slots = sum(s.slots for s in servers)
    if not slots:
        raise ValueError(f"workload for {model_name}: no chat server serves this model")
    ttft0 = sum(s.ttft_s * s.slots for s in servers) / slots
    lam = rpm / 60.0

    def serve(busy: float) -> tuple[float, float]:
        """(service time, decode time of the reply) when `busy` slots of a server are busy on average."""
        steps = [step_s(s, min(max(busy, 1.0), s.slots)) for s in servers]  # a decode step's seconds on each server
        stream_tps = sum(s.slots / t for s, t in zip(servers, steps, strict=True)) / slots
        # prompts that start beside a reply on its server: each other busy slot takes a new
        # request once per service time; each holds the reply for its prefill (stalled_decode_s)
        service = ttft0 + reply_tokens / stream_tps
        for _round in range(50):
            decode_s = stalled_decode_s(reply_tokens, stream_tps, max(busy - 1.0, 0.0) / service, ttft0)
            if not math.isfinite(decode_s):
                return math.inf, math.inf
            service = ttft0 + decode_s
        return service, decode_s

    busy, service, decode_s = 1.0, *serve(1.0)
    for _round in range(200):
        if not math.isfinite(service) or lam * service >= slots:
            break
        busy_next = busy_beside(slots, len(servers), lam * service)
        if abs(busy_next - busy) < 1e-9:
            break
        busy = busy_next
        service, decode_s = serve(busy)
    offered = lam * service
    if not math.isfinite(service) or offered >= slots:
        # overloaded: every slot is busy, so every reply shares its server's steps
        service, decode_s = serve(slots / len(servers))
        stream_tps = reply_tokens / decode_s if decode_s > 0 and math.isfinite(decode_s) else 0.0
        util = lam * service / slots if math.isfinite(service) else math.inf
        return WorkloadResult(model_name, rpm, slots, service, util, math.inf, math.inf, stream_tps, False)
    stream_tps = reply_tokens / decode_s if decode_s > 0 else 0.0  # what a request sees
    util = offered / slots
    p_wait = erlang_c(slots, offered)
    rate = slots / service - lam  # decay rate of the waiting-time tail

    def wait_quantile(q: float) -> float:
        return 0.0 if p_wait <= 1 - q else math.log(p_wait / (1 - q)) / rate

    return WorkloadResult(model_name, rpm, slots, service, util, ttft0 + wait_quantile(0.5),
                          ttft0 + wait_quantile(0.95), stream_tps, True)


def random_routing(model_name: str, rpm: float, prompt_tokens: int, reply_tokens: int,
                   servers: list[Speed]) -> WorkloadResult:
    """The same load when each request goes to one server picked at random (no shared queue).

    Each server is then its own M/M/c queue (c = its slots) with lambda/n arrivals, and a request's
    wait follows the mixture of their waiting-time distributions: a request can queue behind a
    busy server while another one idles. This is what slot-aware pooling (``workload``) avoids.
    """
    if not servers:
        raise ValueError(f"random routing for {model_name}: no chat server serves this model")
    lam = rpm / 60.0 / len(servers)
    services = [s.ttft_s + reply_tokens / (s.batch_decode_tps / s.slots) for s in servers]
    tails = random_tails(lam, servers, services)
    if tails is None:
        service, s = max(zip(services, servers, strict=True), key=lambda x: lam * x[0] / x[1].slots)
        return WorkloadResult(model_name, rpm, sum(x.slots for x in servers), service, lam * service / s.slots,
                              math.inf, math.inf, s.batch_decode_tps / s.slots, False)
    slots = sum(s.slots for s in servers)
    ttft0 = sum(s.ttft_s * s.slots for s in servers) / slots
    service = sum(services) / len(services)
    util = max(lam * sv / s.slots for sv, s in zip(services, servers, strict=True))
    stream_tps = sum(s.batch_decode_tps for s in servers) / slots
    return WorkloadResult(model_name, rpm, slots, service, util, ttft0 + mixture_quantile([(1.0, 0.0)], tails, 0.5),
                          ttft0 + mixture_quantile([(1.0, 0.0)], tails, 0.95), stream_tps, True)


def random_tails(lam: float, servers: list[Speed], services: list[float]) -> list[tuple[float, float]] | None:
    """The waiting-time tails of servers that each get lam arrivals a second at random: per server
    (P(wait > 0), decay rate) of its M/M/c queue (c = its slots); None when one cannot keep up."""
    tails = []
    for s, service in zip(servers, services, strict=True):
        if lam * service >= s.slots:
            return None
        tails.append((erlang_c(s.slots, lam * service), s.slots / service - lam))
    return tails


def mixture_quantile(parts: list[tuple[float, float]], tails: list[tuple[float, float]], q: float) -> float:
    """The q-quantile of x + W over a mixture: x is parts' value with its weight (weights sum to 1),
    W a wait that exceeds t with probability mean_j(p_j exp(-rate_j t)), drawn independently."""
    def above(t: float) -> float:  # P(x + W > t)
        out = 0.0
        for weight, x in parts:
            if t < x:
                out += weight
            else:
                out += weight * sum(p * math.exp(-rate * (t - x)) for p, rate in tails) / len(tails)
        return out

    low, high = 0.0, max(x for _w, x in parts) + 1.0
    while above(high) > 1 - q:
        high *= 2
    for _step in range(100):  # bisection: P(x + W > t) falls with t
        mid = (low + high) / 2
        low, high = (mid, high) if above(mid) > 1 - q else (low, mid)
    return high


# -- a measured mix of requests: the plan beside a run (issue 18 c) --------------------------------
# How a load reaches its servers, as the load model tells them apart (not the pools' own routing names,
# _gateway.ROUTINGS): any server at random, the first free slot, or a conversation's home first.
LOAD_ROUTINGS = ("random", "pool", "affine")


@dataclass
class MixRequest:
    """One request of a run, as the load model sees it: its prompt and what a server's prompt cache can
    hold of it."""
    prompt_tokens: float
    home_tokens: float = 0.0    # cached where its conversation's previous turn ran (0: a first turn)
    shared_tokens: float = 0.0  # its shared prefix: the system prompt, a character card
    shared_warm: float = 0.0    # chance that the server it lands on holds that prefix already


def home_hit(routing: str, utilisation: float, servers: int, slots_per_server: float,
             conversations: int | None = None) -> float:
    """Chance that a turn runs on the server its conversation's previous turn ran on.

    random and pool: 1 / N. affine: a turn goes to its conversation's home unless the home's c slots
    are all busy (b = rho_home^c, each slot taken as busy independently), then to one of the other
    N - 1; two turns in a row meet at home (1 - b)^2, or elsewhere b^2 / (N - 1). The pool hashes each
    conversation to its home (docs/gateway.md), so with C conversations a home holds k of them,
    k - 1 ~ Binomial(C - 1, 1 / N), and is busy rho k N / C; without C, every home holds its share.
    The home's load counts the conversation's own turns: right for open-loop arrivals (the bench's),
    high for a client that waits for each reply before its next turn, whose home it never finds busy
    with itself.
    """
    if routing != "affine":
        return 1.0 / servers
    if servers == 1:
        return 1.0

    def meet(rho: float) -> float:
        busy = min(max(rho, 0.0), 1.0) ** max(slots_per_server, 1)
        return (1.0 - busy) ** 2 + busy ** 2 / (servers - 1)

    if not conversations:
        return meet(utilisation)
    c, p = conversations, 1.0 / servers
    return sum(binomial_pmf(c - 1, k - 1, p) * meet(utilisation * k * servers / c) for k in range(1, c + 1))


def prompt_outcomes(r: MixRequest, hit: float) -> list[tuple[float, float]]:
    """(probability, prompt tokens the server computes) of one request: found at home, the shared
    prefix found, or nothing found."""
    home = hit if r.home_tokens > 0 else 0.0
    out = [(home, r.prompt_tokens - r.home_tokens)] if home else []
    rest = 1.0 - home
    return out + [(rest * r.shared_warm, r.prompt_tokens - r.shared_tokens), (rest * (1.0 - r.shared_warm), r.prompt_tokens)]


def step_s(speed: Speed, generating: float) -> float:
    """A decode step's seconds with `generating` slots decoding (fractional: an average). The line of
    workload() between one slot (1 / decode_tps) and all (slots / batch_decode_tps); below one slot,
    that share of a one-slot step."""
    t1 = 1.0 / speed.decode_tps
    if generating <= 1.0:
        return max(generating, 0.0) * t1
    tn = speed.slots / speed.batch_decode_tps
    return t1 + (generating - 1.0) / max(speed.slots - 1, 1) * (tn - t1)


def mix_workload(model_name: str, rpm: float, reply_tokens: float, servers: list[Speed], requests: list[MixRequest],
                 routing: str, n_batch: int, conversations: int | None = None) -> WorkloadResult:
    """The load model on a run's own mix of requests (their prompts, turns and shared prefixes).

    - The prompt cache: each request computes its prompt less what its server holds (prompt_outcomes:
      the previous turn at home with home_hit's chance, else the shared prefix when that server is warm).
    - The queue: workload() (pool, affine) or random_routing() (random) at the mean computed prompt.
    - Its prefill: llama-server fills a batch of n_batch with the generating slots' tokens first and
      the prompt after (update_slots), so a prompt of c tokens takes c / (n_batch - g) batches (a mean:
      kept fractional, as a prompt's first and last batches are shared with other work), each
      also a decode step of the g slots generating beside it (step_s), besides c / prefill_tps; and a
      prompt that starts while another is prefilling on its server shares the batches with it.
    - The wait: M/G/c by Allen and Cunneen's approximation (M/M/c's x (1 + Cs^2) / 2).
    - TTFT p50 and p95: quantiles of that prefill plus the queue's wait over the mix (mixture_quantile).
    """
    if routing not in LOAD_ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(LOAD_ROUTINGS)}, got {routing!r}")
    if not requests:
        raise ValueError(f"mix_workload for {model_name}: no requests")
    n = len(servers)
    slots = sum(s.slots for s in servers)
    prompt_mean = sum(r.prompt_tokens for r in requests) / len(requests)
    lam = rpm / 60.0
    utilisation, result, outcomes = 0.0, None, []
    for _round in range(20):  # affine's hit rate depends on the utilisation it changes
        hit = home_hit(routing, utilisation, n, slots / n, conversations)
        outcomes = [prompt_outcomes(r, hit) for r in requests]
        computed = sum(p * c for out in outcomes for p, c in out) / len(requests)
        speeds = [with_prompt(s, prompt_mean, computed) for s in servers]
        model = random_routing if routing == "random" else workload
        result = model(model_name, rpm, int(round(prompt_mean)), int(round(reply_tokens)), speeds)
        if not result.stable or abs(result.utilisation - utilisation) < 1e-6:
            break
        utilisation = result.utilisation
    if not result.stable:
        return result
    if routing == "random":
        services = [s.ttft_s + reply_tokens / (s.batch_decode_tps / s.slots) for s in speeds]
        tails = random_tails(lam / n, speeds, services)
        busy = sum(busy_beside(s.slots, 1, lam / n * sv) for s, sv in zip(speeds, services, strict=True)) / n
    else:
        offered = lam * result.service_s
        tails = [(erlang_c(slots, offered), slots / result.service_s - lam)]
        busy = busy_beside(slots, n, offered)
    decode_s = result.service_s - sum(s.ttft_s for s in speeds) / n
    generating = max(busy - 1.0, 0.0) * decode_s / result.service_s  # the others' share of time spent decoding
    parts = []
    for out in outcomes:
        for p, c in out:
            per_server = [c / s.prefill_tps + c / max(n_batch - generating, 1.0) * step_s(s, generating) for s in servers]
            parts.append((p / len(requests), sum(per_server) / n))
    # another prompt prefilling on the same server when one starts (the chance is that server's share
    # of time spent prefilling) takes half of each batch while both run: the start waits for about
    # that prompt's residual prefill, E[x^2] / (2 E[x])
    mean_x = sum(w * x for w, x in parts)
    overlap = min(lam / n * mean_x, 0.9)
    residual = sum(w * x * x for w, x in parts) / (2.0 * mean_x) if mean_x > 0 else 0.0
    parts = [part for w, x in parts for part in ((w * (1.0 - overlap), x), (w * overlap, x + residual))]
    # the wait of M/G/c, Allen and Cunneen's approximation: M/M/c's x (1 + Cs^2) / 2, with Cs^2 the
    # squared coefficient of variation of the service time; here replies have reply_tokens each
    # (the run's), so a service varies with its prefill only
    mean_x = sum(w * x for w, x in parts)
    cs2 = sum(w * (x - mean_x) ** 2 for w, x in parts) / result.service_s ** 2
    tails = [(p, rate * 2.0 / (1.0 + cs2)) for p, rate in tails]
    return dataclasses.replace(result, ttft_p50_s=mixture_quantile(parts, tails, 0.5),
                               ttft_p95_s=mixture_quantile(parts, tails, 0.95))


# -- conversations and the prompt cache (conversation-affine pools, issue 13) ---------------------
@dataclass
class ConversationCache:
    """What a conversation pattern lets the prompt cache save, per request, under both routings."""
    turns: int
    shared_prefix_tokens: int
    message_tokens: float          # a new user message, derived from the mean prompt (see conversation_cache)
    hit_slot_aware: float          # chance a turn finds its conversation's history on the server it lands on
    hit_affine: float
    computed_slot_aware: float     # prompt tokens prefilled per request (the rest comes from the cache)
    computed_affine: float
    kv_mib_per_conversation: float  # what one conversation's last context takes in a server's prompt cache
    cache_mib_needed: float | None  # per server, with active_conversations declared

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def conversation_cache(prompt_tokens: float, reply_tokens: float, turns: int, shared_prefix_tokens: float,
                       servers: int, slots_per_server: float, utilisation: float, kv_mib_per_token: float,
                       active_conversations: int | None = None) -> ConversationCache:
    """Expected prompt-cache reuse of multi-turn conversations behind a pool.

    A conversation of T turns starts with the shared prefix S (system prompt, character card) and a
    user message u; each later turn adds the previous reply R and a new message, so turn t's prompt
    is S + t u + (t - 1) R and its mean over the turns is the declared prompt_tokens P:
    P = S + u (T + 1) / 2 + R (T - 1) / 2, hence u = (2 (P - S) - R (T - 1)) / (T + 1).
    Turn t (t >= 2) finds S + (t - 1)(u + R) tokens cached where the previous turn ran (its
    prompt and reply, which the client sends back); elsewhere only S (every server keeps the few
    shared prefixes warm). Averaged over the turns, the history part is (T - 1)(u + R) / 2.
    - slot-aware only: the turn lands on the previous turn's server by chance, 1 / N.
    - conversation-affine: it goes home unless every slot of the home server is busy (home_hit,
      with the homes hashed over the active conversations when they are declared).
    The home keeps the conversation's last context in its prompt cache (cache_ram) between turns:
    S + T (u + R) tokens at the end; the cache a server needs is that for its share of the active
    conversations.
    """
    if turns < 1:
        raise ValueError("turns must be >= 1")
    message = (2 * (prompt_tokens - shared_prefix_tokens) - reply_tokens * (turns - 1)) / (turns + 1)
    if message <= 0:
        raise ValueError(
            f"prompt_tokens {prompt_tokens:g} is too short for {turns} turns of {reply_tokens:g}-token replies after a "
            f"{shared_prefix_tokens:g}-token shared prefix: the mean prompt of such a conversation is at least "
            f"{shared_prefix_tokens + reply_tokens * (turns - 1) / 2:g}")
    history = (turns - 1) * (message + reply_tokens) / 2
    hit_slot_aware = home_hit("pool", utilisation, servers, slots_per_server) if turns > 1 else 0.0
    hit_affine = home_hit("affine", utilisation, servers, slots_per_server, active_conversations) if turns > 1 else 0.0
    computed = {name: prompt_tokens - shared_prefix_tokens - hit * history
                for name, hit in (("slot_aware", hit_slot_aware), ("affine", hit_affine))}
    kv_conversation = (shared_prefix_tokens + turns * (message + reply_tokens)) * kv_mib_per_token
    need = None if not active_conversations else active_conversations / servers * kv_conversation
    return ConversationCache(turns, int(shared_prefix_tokens), message, hit_slot_aware, hit_affine,
                             computed["slot_aware"], computed["affine"], kv_conversation, need)


def with_prompt(speed: Speed, prompt_tokens: float, computed_tokens: float) -> Speed:
    """The speed of a server whose requests prefill only computed_tokens of their prompt_tokens."""
    saved = (prompt_tokens - computed_tokens) / max(speed.prefill_tps, 1e-9)
    return Speed(speed.decode_tps, speed.prefill_tps, max(speed.ttft_s - saved, 0.0), speed.batch_decode_tps, speed.slots)


# -- the speed profile of a simulated server (llamafleet_backend: sim, docs/sim.md) ------------------
# How fast a model file is read into memory when its server starts. Not measured on the first user's
# host: a SATA SSD reads about 0.5 GB/s, NVMe 2-3 GB/s, the page cache more; it only sets how long a
# simulated server answers 503 "Loading model" after a (re)start.
MODEL_LOAD_GBS = 1.0


def sim_profile(speed: Speed, model: ModelInfo, mem: ServerMemory) -> dict:
    """What a simulated server sleeps, from the plan's speed of the server it stands in for.

    decode_s[n-1] is one decode step with n slots generating: the plan's step alone (1 / decode_tps)
    and with every slot busy (slots / batch_decode_tps); the plan's step time is linear in n
    (server_speed), so the steps between lie on that line. prefill_tps is the plan's; the simulator
    adds a step's prompt tokens at that rate to the step. kv_bytes_per_token sizes the host prompt
    cache (cache_ram) in tokens; n_embd is the embedding's length.
    """
    slots = max(speed.slots, 1)
    alone = 1.0 / speed.decode_tps
    full = slots / speed.batch_decode_tps
    decode_s = [alone + (full - alone) * (n - 1) / (slots - 1) if slots > 1 else alone for n in range(1, slots + 1)]
    kv_per_token = (mem.context * MIB / max(mem.kv.cells_base * mem.kv.streams, 1)) if mem.kv and mem.context else 0.0
    return {
        "decode_s": [round(t, 6) for t in decode_s],
        "prefill_tps": round(speed.prefill_tps, 1),
        "load_s": round(model.weights_bytes / (MODEL_LOAD_GBS * 1e9), 2),
        "n_embd": model.n_embd,
        "kv_bytes_per_token": round(kv_per_token) or 1,
    }
