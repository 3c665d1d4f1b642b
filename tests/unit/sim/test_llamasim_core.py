"""The simulated llama-server's scheduler against llama-server's own rules (0c1e570, tools/server/).

Expected values are worked by hand from the source's rules, quoted beside each test, not from the
scheduler's code: the slot a request gets, the prompt tokens it reuses, and the seconds each batch takes.
"""
from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import ROOT

# the program ships as files of the image (roles/llamacpp_build/files/sim), imported here as the image runs it
sys.path.insert(0, os.path.join(ROOT, "roles", "llamacpp_build", "files", "sim"))
import llamasim_core as sim  # noqa: E402


def tokens(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def run_until_done(scheduler, tasks) -> tuple[float, dict[int, float], dict[int, float]]:
    """Virtual seconds until every task is done; each task's first-token and finish times."""
    clock, first, finished = 0.0, {}, {}
    while not all(t.done for t in tasks):
        seconds, touched = scheduler.step()
        assert touched or seconds == 0.0
        if not touched and not seconds:
            raise AssertionError("the scheduler stalled")
        clock += seconds
        for task in touched:
            first.setdefault(task.id, clock)
            if task.done:
                finished.setdefault(task.id, clock)
    return clock, first, finished


PROFILE = sim.Profile(decode_s=[0.020, 0.025], prefill_tps=1000.0)


def test_an_empty_server_gives_the_first_request_its_last_slot():
    """LRU over idle slots with `slot.t_last_used <= t_last`: on a tie (all -1) the later slot wins."""
    s = sim.Scheduler(2, PROFILE)
    task = sim.Task(1, tokens(0, 10), n_predict=1)
    s.submit(task)
    s.step()
    assert task.slot == 1


def test_a_request_goes_to_the_slot_with_its_longest_prefix_and_reuses_it():
    """LCP / request length above 0.1 picks the slot; n_past = the common prefix, the rest is processed."""
    s = sim.Scheduler(2, PROFILE)
    s.slots[0].tokens, s.slots[0].t_last_used = tokens(0, 10), 5
    s.slots[1].tokens, s.slots[1].t_last_used = tokens(100, 10), 1   # older: LRU would take it
    task = sim.Task(1, tokens(0, 8) + tokens(500, 2), n_predict=1)   # 8 of its 10 tokens are slot 0's
    s.submit(task)
    s.step()
    assert (task.slot, task.n_cached, task.n_processed) == (0, 8, 2)


def test_similarity_at_the_threshold_is_not_enough():
    """`f_sim_cur > slot_prompt_similarity`: 1 of 10 tokens is 0.1, not above 0.1, so LRU decides."""
    s = sim.Scheduler(2, PROFILE)
    s.slots[0].tokens, s.slots[0].t_last_used = tokens(0, 10), 5
    s.slots[1].tokens, s.slots[1].t_last_used = tokens(100, 10), 1
    task = sim.Task(1, tokens(0, 1) + tokens(700, 9), n_predict=1)
    s.submit(task)
    s.step()
    assert task.slot == 1 and task.n_cached == 0


def test_a_repeated_prompt_still_evaluates_its_last_token():
    """TAG_PROMPT_LOGITS: n_past == n_tokens is set to n_tokens - 1."""
    s = sim.Scheduler(1, PROFILE)
    s.slots[0].tokens = tokens(0, 10)
    task = sim.Task(1, tokens(0, 10), n_predict=1)
    s.submit(task)
    s.step()
    assert (task.n_cached, task.n_processed) == (9, 1)


def test_one_request_alone_prefill_then_one_token_a_step():
    """100 prompt tokens at 1000 tok/s = 0.1 s, which samples token 1; tokens 2 and 3 take 0.020 s each."""
    s = sim.Scheduler(1, PROFILE)
    task = sim.Task(1, tokens(0, 100), n_predict=3)
    s.submit(task)
    total, first, _ = run_until_done(s, [task])
    assert first[1] == pytest.approx(0.100)
    assert total == pytest.approx(0.140)
    assert s.metrics["prompt_tokens_total"] == 100 and s.metrics["tokens_predicted_total"] == 3
    # metrics_post_decode: three decodes (the prompt's, then one a token), one busy slot in each
    assert (s.metrics["n_decode_total"], s.metrics["n_busy_slots_total"]) == (3, 3)


def test_a_prompt_longer_than_the_batch_is_split():
    """n_batch 64: 64 tokens (0.064 s), then 36 (0.036 s) with the first token."""
    s = sim.Scheduler(1, PROFILE, n_batch=64)
    task = sim.Task(1, tokens(0, 100), n_predict=1)
    s.submit(task)
    first_step, _ = s.step()
    second_step, touched = s.step()
    assert (first_step, second_step) == (pytest.approx(0.064), pytest.approx(0.036))
    assert touched == [task] and task.done


def test_a_prefill_shares_the_step_with_the_other_slots_decode():
    """Continuous batching: slot A's token and B's 50 prompt tokens in one batch, 0.020 + 0.050 s."""
    s = sim.Scheduler(2, PROFILE)
    a = sim.Task(1, tokens(0, 20), n_predict=5)
    s.submit(a)
    s.step()                       # A's prompt: 0.020 s, its first token
    b = sim.Task(2, tokens(1000, 50), n_predict=5)
    s.submit(b)
    seconds, touched = s.step()
    assert seconds == pytest.approx(0.070)
    assert a in touched and b in touched    # A's second token, B's first
    seconds, _ = s.step()
    assert seconds == pytest.approx(0.025)  # both generating: decode_s[1]


def test_a_busy_server_keeps_the_request_waiting_until_a_slot_frees():
    s = sim.Scheduler(1, PROFILE)
    a, b = sim.Task(1, tokens(0, 10), n_predict=2), sim.Task(2, tokens(50, 10), n_predict=1)
    s.submit(a)
    s.submit(b)
    s.step()
    assert a.slot == 0 and b.slot is None
    s.step()                       # A's last token frees the slot
    s.step()
    assert b.slot == 0


def test_an_embedding_that_does_not_fit_the_rest_of_the_batch_waits_whole():
    """A prompt that cannot be split (non-causal) waits for a batch it fits whole (update_slots)."""
    s = sim.Scheduler(2, PROFILE, n_batch=64)
    chat = sim.Task(1, tokens(0, 10), n_predict=3)
    s.submit(chat)
    s.step()                                         # chat generating: 1 token of each batch taken
    embed = sim.Task(2, tokens(900, 64), n_predict=0, completion=False)
    s.submit(embed)
    s.step()
    assert embed.n_processed == 0
    run_until_done(s, [chat, embed])
    assert embed.n_processed == 64 and embed.done


@pytest.mark.parametrize("cache_tokens, reused", [(1000, (51, 11)), (0, (0, 62))], ids=["cache-ram", "no cache"])
def test_the_host_prompt_cache_brings_back_an_earlier_conversation(cache_tokens, reused):
    """One slot: conversation 1, then an unrelated prompt (the slot's tokens saved by the LRU pick), then
    conversation 1's next turn. With --cache-ram the cache entry (f_keep 1.0) is loaded and all of it
    reused: the 50 prompt tokens and the reply's first token (its last was sampled, never decoded into
    the slot), 11 tokens computed; without it all 62 are computed again."""
    s = sim.Scheduler(1, PROFILE, cache_tokens=cache_tokens)
    for task in (sim.Task(1, tokens(0, 50), n_predict=2, reply=[7001, 7002]),
                 sim.Task(2, tokens(5000, 40), n_predict=2, reply=[8001, 8002])):
        s.submit(task)
        run_until_done(s, [task])
    again = sim.Task(3, tokens(0, 50) + [7001, 7002] + tokens(9000, 10), n_predict=1)
    s.submit(again)
    s.step()
    assert (again.n_cached, again.n_processed) == reused


def test_the_cache_keeps_one_entry_per_prefix_and_drops_the_oldest_past_its_limit():
    """alloc: nothing saved when an entry holds the prompt whole; entries the prompt holds whole go;
    the front entries go until the new one fits."""
    cache = sim.PromptCache(limit_tokens=100)
    cache.save(tokens(0, 40))
    cache.save(tokens(0, 30))                 # held whole by the first entry: not saved
    assert [len(s) for s in cache.states] == [40]
    cache.save(tokens(0, 50))                 # holds the first whole: replaces it
    assert [len(s) for s in cache.states] == [50]
    cache.save(tokens(500, 40))
    cache.save(tokens(900, 30))               # 50 + 40 + 30 > 100: the oldest (50) goes
    assert [s[0] for s in cache.states] == [500, 900]


def test_a_step_with_more_generating_slots_than_the_profile_lists_extrapolates():
    """decode_s [0.020, 0.025]: 4 slots = 0.025 + 2 x 0.005 = 0.035 s."""
    assert PROFILE.step_s(4, 0) == pytest.approx(0.035)


def test_the_tokenizer_keeps_a_shared_text_prefix_a_shared_token_prefix():
    history = "You are Mira, a lighthouse keeper. User: hello there. Assistant: Hi!"
    turn_two = history + " User: how are the ships tonight?"
    a, b = sim.tokenize(history), sim.tokenize(turn_two)
    assert b[:len(a)] == a and len(b) > len(a)
    # at most four letters a token, the space joined to the word: " ligh" "thou" "se"
    assert len(sim.tokenize(" lighthouse")) == 3


@pytest.mark.parametrize("unified, idle_saving, emptied", [(True, True, True), (False, True, False), (True, False, False)],
                         ids=["unified", "per-slot cache", "--no-cache-idle-slots"])
def test_a_launch_saves_the_idle_slots_and_empties_them_when_the_cache_is_unified(unified, idle_saving, emptied):
    """server-context.cpp after launch_slot_with_task: with cache_idle_slots (on by default, needs --cache-ram)
    every idle slot is saved to the host cache, and cleared when kv_unified (TAG_IDLE_SLOT_CLEAR).
    A (50 tokens + a 2-token reply) runs on slot 1 (the LRU tie goes to the later slot); B then starts
    on slot 0 (LRU: never used): slot 1, idle, keeps its 51 tokens (50 + the reply's first) or not."""
    s = sim.Scheduler(2, PROFILE, cache_tokens=1000, unified=unified, cache_idle_slots=idle_saving)
    a = sim.Task(1, tokens(0, 50), n_predict=2, reply=[7001, 7002])
    s.submit(a)
    run_until_done(s, [a])
    b = sim.Task(2, tokens(5000, 40), n_predict=2)
    s.submit(b)
    s.step()
    assert (a.slot, b.slot) == (1, 0)
    assert len(s.slots[1].tokens) == (0 if emptied else 51)
    assert [len(t) for t in s.cache.states] == ([51] if idle_saving else [])
    run_until_done(s, [b])
    # A's next turn finds its 51 tokens either way: in its slot, or loaded back from the host cache
    again = sim.Task(3, tokens(0, 50) + [7001, 7002] + tokens(9000, 10), n_predict=1)
    s.submit(again)
    s.step()
    assert (again.slot, again.n_cached, again.n_processed) == (1, 51, 11)
