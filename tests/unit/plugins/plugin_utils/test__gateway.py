"""Gateway pools: validation of every bad input, and the queueing of a pool vs random routing.

Queueing values are computed by hand below (Erlang C), not with the code's own functions.
"""
from __future__ import annotations

import copy
import math

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._fleet import fleet_host
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._gateway import GatewayError, affinity_buckets, pool_alias, pools
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._inventory import normalize_host
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._plan import plan
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._report import console, markdown
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._shapes import model_info_from_shape
from ansible_collections.llamafleet.fleet.plugins.plugin_utils._speed import Speed, random_routing, workload

SHA = "c" * 64
GEMMA = model_info_from_shape("gemma-3-270m", "Q8_0", "gemma")


def host_vars(chat_ports, embed_ports=(), parallel=1, **chat_args):
    servers = [{"name": f"chat-{i}", "role": "chat", "model": "gemma", "port": p, "container_memory": "768m",
                "args": {"ctx_size": 2048, "parallel": parallel, "threads": 1, **chat_args}}
               for i, p in enumerate(chat_ports)]
    servers += [{"name": f"embed-{i}", "role": "embed", "model": "gemma", "port": p, "container_memory": "512m",
                 "args": {"embeddings": True, "ctx_size": 512, "parallel": 1, "batch_size": 512, "ubatch_size": 512}}
                for i, p in enumerate(embed_ports)]
    return {"llamafleet_backend": "cpu", "llamafleet_host_memory_mib": 8192,
            "llamafleet_host_cpu": {"memory_bandwidth_gbs": 12, "gflops": 40},
            "llamafleet_models": {"gemma": {"path": "/m/gemma.gguf", "sha256": SHA}},
            "llamafleet_servers": servers,
            "llamafleet_workload": {"gemma": {"requests_per_minute": 6, "prompt_tokens": 200, "reply_tokens": 64}}}


def fleet(lab=None, lab2=None):
    specs = [normalize_host("lab", lab or host_vars([8101, 8102], [8201, 8202], parallel=2)),
             normalize_host("lab2", lab2 or host_vars([8301]))]
    return [{"host": s["host"], "servers": fleet_host(s)["servers"], "connection": "local"} for s in specs], specs


MODELS = [{"alias": "lab-chat", "model": "gemma", "role": "chat", "port": 4101},
          {"alias": "lab-embed", "model": "gemma", "role": "embed", "port": 4102}]


def config(**changes):
    out = {"models": copy.deepcopy(MODELS), "key": "sk-lab-gateway-key-0123456789", "port": 4000, "stats_port": 8404,
           "server_key": "the-servers-key-0123456789", "hosts": [{"host": "lab", "connection": "local"}]}
    out.update(changes)
    return out


def test_a_pool_spans_every_host_of_its_model_group_with_slots_as_limits():
    hosts, _ = fleet()
    result = pools(config(), hosts)
    chat, embed = result["pools"]
    assert [(s["name"], s["address"], s["port"], s["slots"]) for s in chat["servers"]] == [
        ("lab.chat-0", "127.0.0.1", 8101, 2), ("lab.chat-1", "127.0.0.1", 8102, 2), ("lab2.chat-0", "127.0.0.1", 8301, 1)]
    assert chat["slots"] == 5 and chat["port"] == 4101
    assert [s["name"] for s in embed["servers"]] == ["lab.embed-0", "lab.embed-1"] and embed["slots"] == 2


def test_a_pool_queues_four_requests_a_slot_before_it_sheds_unless_told_otherwise():
    hosts, _ = fleet()
    chat, embed = pools(config(), hosts)["pools"]
    assert (chat["slots"], chat["max_queue"]) == (5, 20) and (embed["slots"], embed["max_queue"]) == (2, 8)
    models = [dict(MODELS[0], max_queue=3), MODELS[1]]
    assert pools(config(models=models), hosts)["pools"][0]["max_queue"] == 3


def test_an_embedding_pool_publishes_the_largest_input_its_smallest_batch_takes():
    """llama-server refuses an embedding input above min(ubatch_size, batch_size) (server-context.cpp:
    "input (N tokens) is too large to process"; llama_context caps n_ubatch at n_batch). One server with
    ubatch 256, another with batch 384 under ubatch 1024, a third on llama-server's defaults (512/2048):
    the pool's limit is the smallest, 256. Chat pools publish none (the server refuses an over-long
    prompt with 400 itself)."""
    lab = host_vars([8101], [8201, 8202, 8203])
    lab["llamafleet_servers"][1]["args"].update(ubatch_size=256, batch_size=256)
    lab["llamafleet_servers"][2]["args"].update(ubatch_size=1024, batch_size=384, ctx_size=1024)
    for name in ("ubatch_size", "batch_size"):
        del lab["llamafleet_servers"][3]["args"][name]
    hosts, _ = fleet(lab=lab)
    chat, embed = pools(config(), hosts)["pools"]
    assert embed["max_input_tokens"] == 256 and "max_input_tokens" not in chat
    del lab["llamafleet_servers"][1]
    hosts, _ = fleet(lab=lab)
    assert pools(config(), hosts)["pools"][1]["max_input_tokens"] == 384


def test_a_servers_pool_is_the_one_of_its_model_in_its_role():
    """One rule for the rolling restart (filter pool_alias) and for the servers that left (_fleet.leaving)."""
    hosts, _ = fleet()
    published = pools(config(), hosts)["pools"]
    assert pool_alias(published, "gemma", "chat") == "lab-chat" and pool_alias(published, "gemma", "embed") == "lab-embed"
    assert pool_alias(published, "other", "chat") is None and pool_alias([], "gemma", "chat") is None
    from ansible_collections.llamafleet.fleet.plugins.filter.llamafleet import llamafleet_pool_alias
    assert llamafleet_pool_alias(published, "other", "embed") == ""   # Jinja's "no pool": an empty alias


def test_auto_parallel_counts_as_four_slots():
    hosts, _ = fleet(lab2=host_vars([8301], parallel=-1))
    assert pools(config(), hosts)["pools"][0]["servers"][2]["slots"] == 4  # llama-server's auto: 4 slots


BAD = [
    ({"models": MODELS + [dict(MODELS[0], port=4103)]}, "llamafleet_gateway_models[2] (alias lab-chat): the alias is declared twice"),
    ({"models": MODELS + [dict(MODELS[0], alias="other", port=4103)]}, "is already the pool of alias lab-chat"),
    ({"models": [dict(MODELS[0], model="ghost")]}, "no server of model 'ghost' with role chat on any host"),
    ({"models": [dict(MODELS[0], port=8102)]}, "llamafleet_gateway_models[0] (alias lab-chat).port 8102 is already used by server chat-1 on lab"),
    ({"port": 8201}, "llamafleet_gateway_port 8201 is already used by server embed-0 on lab"),
    ({"stats_port": 4101}, "llamafleet_gateway_models[0] (alias lab-chat).port 4101 is already used by llamafleet_gateway_stats_port"),
    ({"key": None}, "llamafleet_gateway_key is not set"),
    ({"key": "short"}, "llamafleet_gateway_key must be 16 or more letters, digits or ._~+/=- (it travels in an "
                       "HTTP header); it has 5 characters"),
    ({"key": "sk-gateway key-0123"}, "llamafleet_gateway_key must be 16 or more letters, digits or ._~+/=- (it "
                                     "travels in an HTTP header); it contains a space"),
    ({"key": "the-servers-key-0123456789"}, "llamafleet_gateway_key equals llama_server_api_key"),
    ({"models": []}, "llamafleet_gateway_models must be a non-empty list"),
    ({"models": [dict(MODELS[0], role="judge")]}, "role must be one of chat, embed"),
    ({"models": [dict(MODELS[0], fallbacks=["nowhere"])]}, "'nowhere' is not an alias"),
    ({"models": [dict(MODELS[0], weight=3)]}, "unknown keys ['weight']"),
    ({"instances": 0}, "llamafleet_gateway_instances must be an integer in 1..8"),
    ({"instances": "2"}, "llamafleet_gateway_instances must be an integer in 1..8"),
    # LiteLLM's instances take the ports after the gateway's: 4100 + 1 is the chat pool's
    ({"port": 4100}, "llamafleet_gateway_models[0] (alias lab-chat).port 4101 is already used by LiteLLM instance 0 "
                     "of llamafleet_gateway_instances (llamafleet_gateway_port + 1)"),
    ({"port": 8100}, "LiteLLM instance 0 of llamafleet_gateway_instances (llamafleet_gateway_port + 1) 8101 is already "
                     "used by server chat-0 on lab"),
    ({"models": [dict(MODELS[0], max_queue=0)]}, "(alias lab-chat).max_queue must be an integer 1 or more"),
    ({"models": [dict(MODELS[0], max_queue=True)]}, "(alias lab-chat).max_queue must be an integer 1 or more"),
    ({"models": [dict(MODELS[0], alias="llamafleet_litellm")]}, "the pools' HAProxy names its own sections"),
    ({"hosts": [{"host": "gw", "ansible_host": "10.0.0.5"}]}, "listens on 127.0.0.1, which gateway host(s) on another machine cannot reach"),
]


@pytest.mark.parametrize("changes,message", BAD, ids=[m for _, m in BAD])
def test_bad_gateway_input_is_refused_with_the_variable_and_the_fix(changes, message):
    hosts, _ = fleet()
    with pytest.raises(GatewayError) as exc:
        pools(config(**changes), hosts)
    assert message in str(exc.value)
    assert "nothing was changed" in str(exc.value)


def test_the_gateway_runs_two_litellm_instances_on_the_ports_after_its_own_by_default():
    hosts, _ = fleet()
    assert pools(config(), hosts)["instances"] == [{"name": "litellm-0", "address": "127.0.0.1", "port": 4001},
                                                   {"name": "litellm-1", "address": "127.0.0.1", "port": 4002}]
    assert [i["port"] for i in pools(config(instances=1, port=5000), hosts)["instances"]] == [5001]


def test_threads_http_too_low_for_the_pool_is_refused():
    hosts, _ = fleet(lab2=host_vars([8301], parallel=2, threads_http=3))
    with pytest.raises(GatewayError, match=r"server chat-0 on lab2: threads_http 3 with 2 slot\(s\).*Set threads_http to 4"):
        pools(config(), hosts)


def test_threads_http_with_room_for_checks_passes():
    hosts, _ = fleet(lab2=host_vars([8301], parallel=2, threads_http=4))
    assert pools(config(), hosts)["pools"][0]["slots"] == 2 + 2 + 2


def test_servers_bound_to_all_addresses_are_reached_at_the_host_address():
    hosts, _ = fleet()
    lab, lab2 = host_vars([8101, 8102], [8201, 8202], parallel=2), host_vars([8301])
    lab["llamafleet_bind_address"], lab2["llamafleet_bind_address"] = "10.0.0.6", "0.0.0.0"
    hosts, _ = fleet(lab, lab2)
    hosts[0].update(ansible_host="10.0.0.6", connection="ssh")
    hosts[1].update(ansible_host="10.0.0.7", connection="ssh")
    chat = pools(config(hosts=[{"host": "lab", "ansible_host": "10.0.0.6"}]), hosts)["pools"][0]
    assert [s["address"] for s in chat["servers"]] == ["10.0.0.6", "10.0.0.6", "10.0.0.7"]


# -- queueing, by hand ---------------------------------------------------------------------------
# Two servers with one slot each; a request holds a slot ttft 0.5 s + 30 tokens at 20 tok/s = 2.0 s
# (mu = 0.5/s). 42 requests/min = 0.7/s: offered load a = 0.7 x 2.0 = 1.4 Erlang, 70% busy.
#
# One pool (M/M/2): Erlang C = (a^2/2!)/(1-rho) / (1 + a + (a^2/2!)/(1-rho))
#   = (1.96/2/0.3) / (1 + 1.4 + 3.26667) = 3.26667 / 5.66667 = 0.576471.
#   P(wait > t) = C e^{-(c mu - lambda) t}, c mu - lambda = 1.0 - 0.7 = 0.3/s.
#   p95 wait = ln(0.576471/0.05)/0.3 = ln(11.52941)/0.3 = 2.444906/0.3 = 8.14969 s -> TTFT p95 8.64969 s.
#   p50 wait = ln(0.576471/0.5)/0.3 = 0.142313/0.3 = 0.474376 s -> TTFT p50 0.974376 s.
# Random routing (two M/M/1, 0.35/s each, rho 0.7): P(wait > 0) = 0.7, decay mu - lambda = 0.15/s.
#   p95 wait = ln(0.7/0.05)/0.15 = ln(14)/0.15 = 2.639057/0.15 = 17.59371 s -> TTFT p95 18.09371 s.
#   p50 wait = ln(0.7/0.5)/0.15 = 0.336472/0.15 = 2.243149 s -> TTFT p50 2.743149 s.
ONE_SLOT = Speed(decode_tps=20.0, prefill_tps=400.0, ttft_s=0.5, batch_decode_tps=20.0, slots=1)


def test_pool_queueing_is_one_mmc_queue_hand_computed():
    result = workload("pool", 42, 200, 30, [ONE_SLOT, ONE_SLOT])
    assert result.utilisation == pytest.approx(0.7)
    assert result.ttft_p95_s == pytest.approx(8.64969, abs=1e-4)
    assert result.ttft_p50_s == pytest.approx(0.974376, abs=1e-4)


def test_random_routing_is_independent_mm1_queues_hand_computed():
    result = random_routing("pool", 42, 200, 30, [ONE_SLOT, ONE_SLOT])
    assert result.stable and result.utilisation == pytest.approx(0.7)
    assert result.ttft_p95_s == pytest.approx(18.09371, abs=1e-3)
    assert result.ttft_p50_s == pytest.approx(2.743149, abs=1e-3)


def test_random_routing_mixture_of_unequal_servers_hand_computed():
    # a 1-slot server (service 2 s) and one twice as fast (service 1 s: ttft 0.5 + 30 tok at 60 tok/s);
    # 0.35/s each: rho 0.7 and 0.35; P(wait > t) = (0.7 e^{-0.15 t} + 0.35 e^{-0.65 t}) / 2.
    fast = Speed(decode_tps=60.0, prefill_tps=400.0, ttft_s=0.5, batch_decode_tps=60.0, slots=1)
    result = random_routing("pool", 42, 200, 30, [ONE_SLOT, fast])
    wait = result.ttft_p95_s - 0.5
    assert (0.7 * math.exp(-0.15 * wait) + 0.35 * math.exp(-0.65 * wait)) / 2 == pytest.approx(0.05, abs=1e-6)
    # the slow server alone dominates the tail: ln(0.35/0.05)/0.15 = 12.973 s; the fast one adds a little
    assert 12.97 < wait < 13.2


def test_random_routing_unstable_when_one_server_is_overloaded():
    result = random_routing("pool", 66, 200, 30, [ONE_SLOT, ONE_SLOT])  # 0.55/s x 2 s = 1.1 per server
    assert not result.stable and math.isinf(result.ttft_p95_s)


def test_plan_queues_per_pool_across_hosts_not_per_host():
    # lab: two 1-slot chat servers; lab2: one. Each host declares 6 req/min of gemma: the pool gets 12.
    lab, lab2 = host_vars([8101, 8102]), host_vars([8301])
    specs = [normalize_host("lab", lab), normalize_host("lab2", lab2)]
    gateway = config(models=[MODELS[0]], fleet_hosts={"lab": {"connection": "local"}, "lab2": {"connection": "local"}})
    result = plan(specs, {"lab": {"gemma": GEMMA}, "lab2": {"gemma": GEMMA}}, gateway)
    rows = result["workloads"]
    assert [(r["host"], r.get("pool"), r["slots"], r["requests_per_minute"]) for r in rows] == [("gateway", "lab-chat", 3, 12.0)]
    row = rows[0]
    # a full queue of 4 x 3 slots = 12 requests: the last waits for 12 others, 3 at a time
    assert row["max_queue"] == 12 and row["queue_full_wait_s"] == pytest.approx(12 * row["service_s"] / 3, abs=0.01)
    assert row["random_routing"]["ttft_p95_s"] >= row["ttft_p95_s"]
    assert [(m["name"], m["slots"]) for m in result["gateway"]["pools"][0]["servers"]] == [
        ("lab.chat-0", 1), ("lab.chat-1", 1), ("lab2.chat-0", 1)]
    assert "Gateway pools" in console(result) and "## Gateway pools" in markdown(result)
    assert "p95 if routed at random" in console(result)


def test_the_gateway_host_plans_the_memory_of_its_litellm_instances_and_haproxy():
    # lab is the gateway host: 2 LiteLLM instances of 310 MiB (301 MiB peak measured under overload) +
    # HAProxy 10 MiB (8 MiB peak measured) = 630 MiB more on its host RAM; lab2 runs no gateway
    lab, lab2 = host_vars([8101, 8102]), host_vars([8301])
    specs = [normalize_host("lab", lab), normalize_host("lab2", lab2)]
    models = {"lab": {"gemma": GEMMA}, "lab2": {"gemma": GEMMA}}
    gateway = config(models=[MODELS[0]], fleet_hosts={"lab": {"connection": "local"}, "lab2": {"connection": "local"}})
    alone = {h["host"]: h for h in plan(specs, models)["hosts"]}
    hosts = {h["host"]: h for h in plan(specs, models, gateway)["hosts"]}
    assert (hosts["lab"]["gateway_mib"], hosts["lab2"]["gateway_mib"]) == (630, 0)
    assert hosts["lab"]["planned_mib"] == pytest.approx(alone["lab"]["planned_mib"] + 630)
    assert hosts["lab2"]["planned_mib"] == alone["lab2"]["planned_mib"]
    hosts = {h["host"]: h for h in plan(specs, models, dict(gateway, instances=1))["hosts"]}
    assert hosts["lab"]["gateway_mib"] == 320


def test_plan_refuses_a_bad_gateway():
    specs = [normalize_host("lab", host_vars([8101, 8102]))]
    with pytest.raises(GatewayError, match="llamafleet_gateway_key is not set"):
        plan(specs, {"lab": {"gemma": GEMMA}}, config(models=[MODELS[0]], key=""))


def test_plan_without_a_gateway_keeps_per_host_rows():
    specs = [normalize_host("lab", host_vars([8101, 8102]))]
    result = plan(specs, {"lab": {"gemma": GEMMA}})
    assert [(r["host"], r["slots"]) for r in result["workloads"]] == [("lab", 2)]
    assert "gateway" not in result


# -- conversation-affine routing (issue 13) ----------------------------------------------------------
def test_pools_default_to_leastconn_and_chat_may_opt_in_to_affine():
    hosts, _ = fleet()
    assert [p["routing"] for p in pools(config(), hosts)["pools"]] == ["leastconn", "leastconn"]
    models = copy.deepcopy(MODELS)
    models[0]["routing"] = "affine"
    chat, embed = pools(config(models=models), hosts)["pools"]
    assert (chat["routing"], embed["routing"]) == ("affine", "leastconn")
    # every one of the 64 buckets has exactly one home among the chat servers; embed servers get none
    homes = sorted(b for s in chat["servers"] for b in s["buckets"])
    assert homes == list(range(64)) and chat["affinity_buckets"] == 64
    assert all("buckets" not in s for s in embed["servers"])


def test_routing_can_be_set_per_alias_and_is_validated():
    hosts, _ = fleet()
    models = copy.deepcopy(MODELS)
    models[0]["routing"] = "leastconn"
    assert pools(config(models=models), hosts)["pools"][0]["routing"] == "leastconn"
    models[0]["routing"] = "sticky"
    with pytest.raises(GatewayError, match=r"llamafleet_gateway_models\[0\] \(alias lab-chat\)\.routing must be one of affine, leastconn"):
        pools(config(models=models), hosts)


def test_affinity_buckets_move_only_to_a_joining_server_and_follow_slots():
    two = [{"name": "a", "slots": 1}, {"name": "b", "slots": 1}]
    before = affinity_buckets(two)
    after = affinity_buckets(two + [{"name": "c", "slots": 1}])
    # a bucket either kept its home or moved to the new server c: never from a to b or b to a
    for name in ("a", "b"):
        assert set(after[name]) <= set(before[name])
    assert set(after["c"]) == set(range(64)) - set(after["a"]) - set(after["b"])
    # removing c gives exactly the two-server assignment back
    assert affinity_buckets(two) == before
    # weights: a 3-slot server beside a 1-slot one expects 48 of 64 buckets (binomial sd ~3.5)
    weighted = affinity_buckets([{"name": "big", "slots": 3}, {"name": "small", "slots": 1}])
    assert 38 <= len(weighted["big"]) <= 58, weighted


def test_the_plan_models_a_conversation_pattern_per_pool():
    # two one-slot servers; conversations of 4 turns, 100 shared tokens, mean prompt 400, replies 50
    lab = host_vars([8101, 8102])
    lab["llamafleet_workload"]["gemma"].update(prompt_tokens=400, reply_tokens=50, turns_per_conversation=4,
                                               shared_prefix_tokens=100, active_conversations=40)
    specs = [normalize_host("lab", lab)]
    result = plan(specs, {"lab": {"gemma": GEMMA}}, config(models=[dict(MODELS[0], routing="affine")],
                                                                  fleet_hosts={"lab": {"connection": "local"}}))
    conv = result["workloads"][0]["conversations"]
    # by hand: message u = (2 (400 - 100) - 50 x 3) / 5 = 90; the history part averages 3 x 140 / 2 = 210;
    # slot-aware: found on the previous server 1 time in 2: computed 400 - 100 - 105 = 195
    assert conv["message_tokens"] == pytest.approx(90)
    assert conv["computed_slot_aware"] == pytest.approx(195)
    assert conv["hit_slot_aware"] == pytest.approx(0.5)
    assert conv["hit_affine"] > conv["hit_slot_aware"] and conv["computed_affine"] < conv["computed_slot_aware"]
    assert conv["ttft_p50_affine_s"] < conv["ttft_p50_slot_aware_s"]
    assert conv["routing"] == "affine"
    # memory: one conversation ends at 100 + 4 x 140 = 660 tokens of KV; 40 conversations over 2 servers
    assert conv["cache_mib_needed"] == pytest.approx(20 * conv["kv_mib_per_conversation"], rel=1e-3)
    assert "Conversations (prompt cache per pool" in console(result) and "### Conversations" in markdown(result)
    assert "50% / " in console(result)  # slot-aware finds the history 1 time in 2


def test_a_conversation_pattern_that_cannot_fit_its_mean_prompt_is_a_finding():
    lab = host_vars([8101, 8102])
    lab["llamafleet_workload"]["gemma"].update(prompt_tokens=100, reply_tokens=64, turns_per_conversation=6,
                                               shared_prefix_tokens=80)
    result = plan([normalize_host("lab", lab)], {"lab": {"gemma": GEMMA}},
                  config(models=[MODELS[0]], fleet_hosts={"lab": {"connection": "local"}}))
    found = [f for f in result["findings"] if f["code"] == "conversation-pattern"]
    assert found and "prompt_tokens 100 is too short for 6 turns" in found[0]["message"]


@pytest.mark.parametrize("cache_ram,fires", [(1, True), (-1, False)], ids=["1-mib", "unlimited"])
def test_a_prompt_cache_smaller_than_the_active_conversations_is_a_warning(cache_ram, fires):
    # 40 active conversations of 4 turns over 2 servers: each server must hold 20 conversations' KV state
    # (660 tokens each at the end, see above); 1 MiB of cache_ram holds none of them, -1 has no limit
    lab = host_vars([8101, 8102], cache_ram=cache_ram)
    lab["llamafleet_workload"]["gemma"].update(prompt_tokens=400, reply_tokens=50, turns_per_conversation=4,
                                               shared_prefix_tokens=100, active_conversations=40)
    result = plan([normalize_host("lab", lab)], {"lab": {"gemma": GEMMA}},
                  config(models=[dict(MODELS[0], routing="affine")], fleet_hosts={"lab": {"connection": "local"}}))
    found = [f for f in result["findings"] if f["code"] == "prompt-cache-small"]
    assert bool(found) is fires
    if fires:
        need = result["workloads"][0]["conversations"]["cache_mib_needed"]
        assert found[0]["level"] == "warning"
        assert f"need {need:.0f} MiB of prompt cache per server, cache_ram gives 1" in found[0]["message"]
