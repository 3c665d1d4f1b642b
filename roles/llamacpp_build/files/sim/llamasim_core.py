"""The scheduler of a simulated llama-server: slots, continuous batching and the prompt cache, timed, no model.

A test double for a GPU we do not have (issue 18). It decides what llama-server at the pinned ref
(0c1e570, `tools/server/` of the llama.cpp tree in the lab's source archive) decides, and only sleeps
where llama-server computes:

- slot selection, `server_context::get_available_slot` (server-context.cpp): an idle slot whose cached
  prompt shares the longest common prefix with the request, as a fraction of the request, above
  `slot_prompt_similarity` (default 0.1, common.h); otherwise the least recently used idle slot (ties go
  to the later slot: `t_last_used <= t_last`). No idle slot: the task waits (FIFO) until one is free;
- prompt reuse: `n_past` = the common prefix of the slot's tokens and the request's, and at least one
  token is evaluated (`n_past == n_tokens` gives `n_past - 1`, TAG_PROMPT_LOGITS); those count as
  `prompt_tokens_cached`, the rest are processed;
- the host prompt cache (`--cache-ram`, `server_prompt_cache` in server-task.cpp): a slot chosen by LRU,
  or by similarity keeping less than half its tokens (`f_keep < 0.5`), saves its prompt (unless an entry
  already holds it whole; entries it contains whole are dropped; the oldest go past the limit) and loads
  the entry with the best `f_keep` and `f_sim` (entries with `f_keep < 0.25` skipped); completions only;
- one batch per step (`update_slots`): every generating slot adds its one token, then prompts add
  tokens until `n_batch`; a prompt that cannot be split (embeddings) waits for a batch it fits whole.

Time per step is the speed profile's: `decode_s(n)` for a step with n generating slots, plus the prompt
tokens of the step at `prefill_tps`. The profile comes from the plan's speed model or from a real card's
measurement; every figure measured on a simulated server must say that it was.
"""
from __future__ import annotations

import dataclasses
import re
from collections import deque

DEFAULT_SLOT_PROMPT_SIMILARITY = 0.1   # common.h: float slot_prompt_similarity = 0.1f
DEFAULT_N_BATCH = 2048                 # common.h: n_batch = 2048


def common_prefix(a: list[int], b: list[int]) -> int:
    """Tokens at the start of both (server_tokens::get_common_prefix)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


_PIECES = re.compile(r" ?[A-Za-z]{1,4}| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+")


def tokenize(text: str) -> list[int]:
    """An approximation of a BPE tokenizer, stable across calls: at most 4 letters per token, a leading
    space (not a newline) joined to its word, digits in threes. Same text, same tokens; a shared prefix of text is a
    shared prefix of tokens, which is what the slots and the prompt cache see. Its count against the
    model's own tokenizer is an approximation and is measured as such (docs)."""
    return [hash_piece(p) for p in _PIECES.findall(text)]


def hash_piece(piece: str) -> int:
    h = 2166136261
    for ch in piece.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h % 100000


@dataclasses.dataclass
class Profile:
    """Seconds a step takes: decode_s[n-1] for n generating slots (the last value grows by the last
    difference beyond the list), and prompt tokens at prefill_tps."""
    decode_s: list[float]
    prefill_tps: float

    def step_s(self, generating: int, prompt_tokens: int) -> float:
        t = prompt_tokens / self.prefill_tps
        if generating:
            known = self.decode_s
            if generating <= len(known):
                t += known[generating - 1]
            else:
                slope = known[-1] - known[-2] if len(known) > 1 else 0.0
                t += known[-1] + slope * (generating - len(known))
        return t


@dataclasses.dataclass
class Task:
    id: int
    tokens: list[int]
    n_predict: int
    completion: bool = True        # chat/completions; False for embeddings (no split, no prompt cache)
    reply: list[int] = dataclasses.field(default_factory=list)  # the tokens it generates (its reply text's)
    # filled in by the scheduler
    slot: int | None = None
    n_cached: int = 0
    n_processed: int = 0
    n_generated: int = 0
    done: bool = False


@dataclasses.dataclass
class Slot:
    id: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    t_last_used: int = -1
    task: Task | None = None
    n_prompt_done: int = 0          # tokens of the task's prompt in the KV cache

    @property
    def processing(self) -> bool:
        return self.task is not None

    @property
    def generating(self) -> bool:
        """Its task's prompt is all in the KV cache: each batch decodes one token of it."""
        return self.task is not None and self.n_prompt_done >= len(self.task.tokens)


class PromptCache:
    """llama-server's host prompt cache (server_prompt_cache), sized in tokens."""

    def __init__(self, limit_tokens: int):
        self.limit_tokens = limit_tokens
        self.states: deque[list[int]] = deque()

    def n_tokens(self) -> int:
        return sum(len(s) for s in self.states)

    def save(self, tokens: list[int]) -> None:
        """server_prompt_cache::alloc (plus the slot's copy): nothing when an entry holds it whole."""
        if not tokens or any(common_prefix(s, tokens) == len(tokens) for s in self.states):
            return
        if len(tokens) > self.limit_tokens:
            return
        self.states = deque(s for s in self.states if common_prefix(s, tokens) != len(s))
        while self.states and self.n_tokens() + len(tokens) > self.limit_tokens:
            self.states.popleft()
        self.states.append(list(tokens))

    def load(self, slot_tokens: list[int], new: list[int]) -> list[int]:
        """server_prompt_cache::load: the entry that beats the slot's own tokens, taken out; else the slot's."""
        lcp_best = common_prefix(slot_tokens, new)
        f_keep_best = lcp_best / len(slot_tokens) if slot_tokens else -1.0
        f_sim_best = lcp_best / len(new)
        best = None
        for i, state in enumerate(self.states):
            lcp = common_prefix(state, new)
            f_keep, f_sim = lcp / len(state), lcp / len(new)
            if f_keep < 0.25:
                continue
            if f_keep_best < f_keep and f_sim_best < f_sim:
                f_keep_best, f_sim_best, best = f_keep, f_sim, i
        if best is None:
            return slot_tokens
        tokens = self.states[best]
        del self.states[best]
        return tokens


class Scheduler:
    """The slots of one simulated llama-server, advanced one batch at a time (virtual time: the caller
    sleeps `step()`'s seconds)."""

    def __init__(self, slots: int, profile: Profile, n_batch: int = DEFAULT_N_BATCH,
                 slot_prompt_similarity: float = DEFAULT_SLOT_PROMPT_SIMILARITY, cache_tokens: int = 0,
                 unified: bool = False, cache_idle_slots: bool = True):
        self.slots = [Slot(i) for i in range(slots)]
        self.profile = profile
        self.n_batch = n_batch
        self.similarity = slot_prompt_similarity
        self.cache = PromptCache(cache_tokens) if cache_tokens > 0 else None
        self.unified = unified
        # --cache-idle-slots (common.h: on; off without a host cache, server-context.cpp)
        self.cache_idle_slots = cache_idle_slots and self.cache is not None
        self.waiting: deque[Task] = deque()
        self.started: list[Task] = []
        self.releases = 0               # slots released so far: the order of t_last_used (release() stamps the time)
        self.metrics = {"prompt_tokens_total": 0, "prompt_tokens_cached_total": 0, "tokens_predicted_total": 0,
                        "prompt_seconds_total": 0.0, "tokens_predicted_seconds_total": 0.0, "n_decode_total": 0,
                        "n_busy_slots_total": 0}

    def submit(self, task: Task) -> None:
        self.waiting.append(task)

    def busy(self) -> int:
        return sum(s.processing for s in self.slots)

    def idle(self) -> bool:
        return not self.waiting and not self.busy()

    def select_slot(self, task: Task) -> Slot | None:
        """get_available_slot: the most similar idle slot above the threshold, else the least recently used."""
        chosen, update_cache = None, False
        if self.similarity != 0.0:
            best = 0.0
            for slot in self.slots:
                if slot.processing or not slot.tokens:
                    continue
                sim = common_prefix(slot.tokens, task.tokens) / len(task.tokens)
                if sim > best and sim > self.similarity:
                    best, chosen = sim, slot
            if chosen is not None and best * len(task.tokens) / len(chosen.tokens) < 0.5:
                update_cache = True
        if chosen is None:
            t_last = -1
            for slot in self.slots:
                if slot.processing:
                    continue
                if chosen is None or slot.t_last_used <= t_last:
                    t_last, chosen = slot.t_last_used, slot
            update_cache = chosen is not None
        if chosen is not None and update_cache and self.cache is not None and task.completion:
            self.cache.save(chosen.tokens)
            chosen.tokens = self.cache.load(chosen.tokens, task.tokens)
        return chosen

    def _start(self, slot: Slot, task: Task) -> None:
        n_past = common_prefix(slot.tokens, task.tokens) if task.completion else 0
        if n_past == len(task.tokens) and n_past > 0:
            n_past -= 1   # at least one token evaluated (TAG_PROMPT_LOGITS)
        slot.tokens = slot.tokens[:n_past]
        slot.task, slot.n_prompt_done = task, n_past
        task.slot, task.n_cached = slot.id, n_past
        self.metrics["prompt_tokens_cached_total"] += n_past

    def step(self) -> tuple[float, list[Task]]:
        """One batch: tasks that found a slot start, generating slots decode one token each, prompts fill
        the rest of the batch. Returns the step's seconds and the tasks that got a token (or finished)."""
        self.started = []   # the tasks that found a slot in this step (llama-server tells a streaming client then)
        while self.waiting:
            slot = self.select_slot(self.waiting[0])
            if slot is None:
                break
            self.started.append(self.waiting[0])
            self._start(slot, self.waiting.popleft())
            if self.cache_idle_slots:
                # after a launch, every idle slot is saved to the host cache, and emptied when the KV cache is
                # unified (server-context.cpp, TAG_IDLE_SLOT_CLEAR)
                for idle in self.slots:
                    if not idle.processing:
                        self.cache.save(idle.tokens)
                        if self.unified:
                            idle.tokens = []
        generating = [s for s in self.slots if s.generating]
        room = max(self.n_batch - len(generating), 0)
        prefill: list[tuple[Slot, int]] = []
        for slot in self.slots:
            if not slot.processing or slot.generating or room <= 0:
                continue
            left = len(slot.task.tokens) - slot.n_prompt_done
            if not slot.task.completion and left > room:
                continue  # cannot split: waits for a batch it fits whole
            take = min(left, room)
            prefill.append((slot, take))
            room -= take
        if not generating and not prefill:
            return 0.0, []
        prompt_tokens = sum(take for _slot, take in prefill)
        seconds = self.profile.step_s(len(generating), prompt_tokens)
        # metrics_post_decode: every decode counts, with every slot that is processing (prefill or not)
        self.metrics["n_decode_total"] += 1
        self.metrics["n_busy_slots_total"] += self.busy()
        # the step's time split over its tokens, prompt and generated alike (llama-server times each slot's
        # prompt and generation itself; one batch serves both, so a split is what a simulation can give)
        share = seconds / max(len(generating) + prompt_tokens, 1)
        self.metrics["prompt_seconds_total"] += share * prompt_tokens
        self.metrics["tokens_predicted_seconds_total"] += share * len(generating)
        touched = []
        for slot, take in prefill:
            task = slot.task
            slot.tokens += task.tokens[slot.n_prompt_done:slot.n_prompt_done + take]
            slot.n_prompt_done += take
            task.n_processed += take
            self.metrics["prompt_tokens_total"] += take
            if slot.n_prompt_done >= len(task.tokens):
                # the last prompt batch samples the first token (or, for an embedding, the vector)
                self._emit(slot, touched)
        for slot in generating:
            self._emit(slot, touched)
        return seconds, touched

    def _emit(self, slot: Slot, touched: list[Task]) -> None:
        task = slot.task
        if task.completion:
            task.n_generated += 1
            self.metrics["tokens_predicted_total"] += 1
        touched.append(task)
        if not task.completion or task.n_generated >= task.n_predict:
            task.done = True
            slot.task = None
            self.releases += 1
            slot.t_last_used = self.releases
        else:
            # a sampled token enters the slot's tokens when the next batch decodes it
            # (server_slot::handle_last_sampled_token), so the last one of a reply never does; the reply's own tokens, which the
            # next turn carries in its history, are then found cached
            reply, n = task.reply, task.n_generated
            slot.tokens.append(reply[n - 1] if n <= len(reply) else hash_piece(f"gen{task.id}:{n}"))
