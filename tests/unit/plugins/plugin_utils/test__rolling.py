"""The rolling restart's preflight: selection, override, bound, capacity of the rest, and the summary."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._rolling import (
    RollingError,
    apply_override,
    args_change,
    capacity,
    patterns_of,
    record_standins,
    select,
    standin,
    standin_room,
    standin_rooms,
    summary,
    validate_bound,
    validate_flags,
)


def server(name, role="chat", model="m", **args):
    return {"name": name, "role": role, "model": model, "args": dict({"ubatch_size": 256}, **args)}


def hosts(rpm=None):
    workload = {"m": {"requests_per_minute": rpm, "prompt_tokens": 100, "reply_tokens": 50}} if rpm else {}
    return [{"host": "a", "servers": [server("chat-0"), server("embed-0", "embed", "e")], "workload": workload},
            {"host": "b", "servers": [server("chat-1")], "workload": {}}]


# one slot per server: a request holds it ttft 1 s + 50 reply tokens at 10 tok/s = 6 s
SPEED = {"decode_tps": 10.0, "prefill_tps": 100.0, "ttft_s": 1.0, "batch_decode_tps": 10.0, "slots": 1}
SPEEDS = {("a", "chat-0"): SPEED, ("b", "chat-1"): SPEED, ("a", "embed-0"): SPEED}


def test_patterns_default_to_every_server_and_accept_a_comma_string():
    assert patterns_of(None) == ["*"] and patterns_of([]) == ["*"]
    assert patterns_of("chat-0, chat-1") == ["chat-0", "chat-1"]
    with pytest.raises(RollingError, match="llamafleet_rolling_servers must be a list"):
        patterns_of([3])


def test_select_by_name_and_glob_across_hosts():
    assert select(hosts(), ["chat-*"]) == [("a", "chat-0"), ("b", "chat-1")]
    assert select(hosts(), ["embed-0", "chat-0"]) == [("a", "embed-0"), ("a", "chat-0")]


def test_a_pattern_matching_no_server_is_refused_naming_the_servers():
    with pytest.raises(RollingError) as err:
        select(hosts(), ["chat-0", "chta-*"])
    assert "'chta-*' matches no server" in str(err.value)
    assert "chat-0, chat-1, embed-0" in str(err.value)


def test_override_goes_on_the_chosen_servers_only():
    out = apply_override(hosts(), [("a", "chat-0")], {"ubatch_size": 128})
    assert out[0]["servers"][0]["args"]["ubatch_size"] == 128
    assert out[1]["servers"][0]["args"]["ubatch_size"] == 256
    assert hosts()[0]["servers"][0]["args"]["ubatch_size"] == 256  # the input is not changed


@pytest.mark.parametrize("override,message", [
    ({"ubatch_size": "lots"}, "args_override: args.ubatch_size must be an integer"),
    ({"port": 9000}, "managed by llamafleet"),
    ([1], "must be a mapping"),
])
def test_a_bad_override_is_refused(override, message):
    with pytest.raises(RollingError, match=message):
        apply_override(hosts(), [("a", "chat-0")], override)


@pytest.mark.parametrize("value,expected", [(0.5, 0.5), ("0.25", 0.25), (0, 0.0), (2, 2.0), (None, 1.0)])
def test_bound_accepts_numbers(value, expected):
    assert validate_bound(value) == expected


@pytest.mark.parametrize("value", ["fast", "", True, -0.1, "nan", "inf", [0.5]])
def test_bound_that_is_not_a_number_is_refused(value):
    with pytest.raises(RollingError, match="llamafleet_rolling_max_regression must be"):
        validate_bound(value)


def test_flags_must_be_booleans():
    assert validate_flags({"force": True, "allow_outage": False}) == []
    assert validate_flags({"force": "yes"}) == ["llamafleet_rolling_force must be true or false, got 'yes'"]


def test_the_rest_of_the_group_carries_the_declared_load():
    # 6 requests/min = 0.1/s x 6 s per request = 0.6 of the one slot left
    rows = capacity(hosts(rpm=6), SPEEDS, [("a", "chat-0")])
    assert rows[0]["rest"] == ["b.chat-1"] and rows[0]["mode"] == "rolling"
    assert rows[0]["utilisation"] == pytest.approx(0.6)


def test_a_rollout_leaving_too_little_capacity_is_refused():
    # 12 requests/min = 0.2/s x 6 s = 1.2 > the one slot left: the queue grows without bound
    with pytest.raises(RollingError) as err:
        capacity(hosts(rpm=12), SPEEDS, [("a", "chat-0")])
    assert "without chat-0, model group chat/m has 1 slot(s) on b.chat-1" in str(err.value)
    assert "utilisation 120%" in str(err.value)


def test_a_group_of_one_is_refused_unless_an_outage_is_allowed():
    with pytest.raises(RollingError, match="embed-0 is the only server of model group embed/e"):
        capacity(hosts(), SPEEDS, [("a", "embed-0")])
    rows = capacity(hosts(), SPEEDS, [("a", "embed-0")], allow_outage=True)
    assert rows[0]["mode"] == "outage"


def test_a_group_of_one_gets_a_standin_when_its_copy_fits():
    rows = capacity(hosts(), SPEEDS, [("a", "embed-0")], standins={("a", "embed-0"): (True, "a copy beside it needs 512 MiB")})
    assert rows[0]["mode"] == "standin" and rows[0]["standin"] == "a copy beside it needs 512 MiB"
    # a copy that does not fit: refused with the numbers, unless an outage is accepted
    room = {("a", "embed-0"): (False, "a copy beside it needs 900 MiB on cuda:0 (400 MiB free)")}
    with pytest.raises(RollingError, match=r"needs 900 MiB on cuda:0 \(400 MiB free\)\. Add a server"):
        capacity(hosts(), SPEEDS, [("a", "embed-0")], standins=room)
    assert capacity(hosts(), SPEEDS, [("a", "embed-0")], allow_outage=True, standins=room)[0]["mode"] == "outage"


def plans(old_total, new_total, device_planned, host_planned, host_memory=16384, limit=5632, device="cuda:0"):
    """The two plan results standin_room reads: the new configuration's (planned) and the previous one's."""
    def result(total):
        return {"servers": [{"host": "h", "name": "chat-0", "device": device, "memory_mib": {"total": total},
                             "host_memory_mib": {"container_limit": limit}}],
                "devices": [{"host": "h", "device": "cuda:0", "free_mib": 6144 - device_planned}],
                "hosts": [{"host": "h", "memory_mib": host_memory, "planned_mib": host_planned}]}
    return result(new_total), result(old_total)


def test_standin_room_on_a_gpu_counts_the_previous_configuration_beside_the_new_one():
    # a 6144 MiB card with 2100 MiB planned (new configuration) has 4044 MiB free; the copy runs the previous one
    fits, text = standin_room(*plans(old_total=2000, new_total=2100, device_planned=2100, host_planned=3000), "h", "chat-0")
    assert fits and text == ("a copy beside it needs 2,000 MiB on cuda:0 (4,044 MiB free) and up to 5,632 MiB of host RAM "
                             "(13,384 MiB free)")
    # a P106-100's 8B chat server: 5,100 MiB planned leaves 1,044 MiB, the copy needs 5,000
    fits, text = standin_room(*plans(old_total=5000, new_total=5100, device_planned=5100, host_planned=3000), "h", "chat-0")
    assert not fits and text == "a copy beside it needs 5,000 MiB on cuda:0 (1,044 MiB free)"


def test_standin_room_in_host_ram_is_the_copy_s_container_limit():
    # CPU backend: 8192 MiB of RAM, 7800 planned: 392 MiB free for a copy limited to 768 MiB
    fits, text = standin_room(*plans(100, 100, 0, host_planned=7800, host_memory=8192, limit=768, device="cpu"),
                              "h", "chat-0")
    assert not fits and text == "a copy beside it needs up to 768 MiB of host RAM (392 MiB free)"
    fits, _ = standin_room(*plans(100, 100, 0, host_planned=7424, host_memory=8192, limit=768, device="cpu"), "h", "chat-0")
    assert fits  # 768 free, exactly the limit


def test_the_standin_is_the_server_on_another_port():
    running = {"name": "chat-0", "container_name": "llamafleet-chat-0", "port": 8101, "url": "http://127.0.0.1:8101",
               "image": "llamafleet/llama-server:old", "config": "abc", "container_memory": "768m",
               "argv": ["--model", "/models/m.gguf", "--host", "127.0.0.1", "--port", "8101", "--api-key-file", "/k",
                        "--ctx-size", "8101"]}
    copy = standin(running, 10000)
    assert copy == dict(running, name="chat-0-standin", container_name="llamafleet-chat-0-standin", port=18101,
                        url="http://127.0.0.1:18101", config="standin:abc",
                        # only --port's value moves, not another flag's equal value
                        argv=["--model", "/models/m.gguf", "--host", "127.0.0.1", "--port", "18101", "--api-key-file",
                              "/k", "--ctx-size", "8101"])
    assert running["argv"][5] == "8101"  # the running server's own entry is not changed
    with pytest.raises(ValueError, match="8101 \\+ llama_server_standin_port_offset 60000 = 68101 is not a TCP port"):
        standin(running, 60000)


def fleet_plan():
    """Two hosts on the CPU backend: chat-0 and chat-1 share a model group; embed-0 (in a pool) and
    rerank-0 (in none) are alone in theirs. Host a: 8192 MiB, 6000 planned; host b: 4096, 3900 planned."""
    def row(host, name, model, role, limit):
        return {"host": host, "name": name, "model": model, "role": role, "device": "cpu",
                "memory_mib": {"total": 100.0}, "host_memory_mib": {"container_limit": limit}}
    return {"servers": [row("a", "chat-0", "m", "chat", 768), row("b", "chat-1", "m", "chat", 768),
                        row("a", "embed-0", "e", "embed", 1408), row("b", "rerank-0", "r", "embed", 256)],
            "hosts": [{"host": "a", "memory_mib": 8192, "planned_mib": 6000.0},
                      {"host": "b", "memory_mib": 4096, "planned_mib": 3900.0}],
            "devices": [],
            "gateway": {"pools": [{"alias": "chat", "servers": [{"host": "a", "server": "chat-0"},
                                                                {"host": "b", "server": "chat-1"}]},
                                  {"alias": "embed", "servers": [{"host": "a", "server": "embed-0"}]}]},
            "fleet": {"a": {"servers": []}, "b": {"servers": []}}}


def test_standins_are_for_servers_alone_in_their_group_and_in_a_pool():
    planned = fleet_plan()
    # embed-0 only: the chat servers have each other, rerank-0 is in no pool; 8192 - 6000 = 2192 MiB free >= 1408
    assert standin_rooms(planned) == {("a", "embed-0"): (True, "a copy beside it needs up to 1,408 MiB of host RAM "
                                                             "(2,192 MiB free)")}
    record_standins(planned)
    assert planned["fleet"]["a"]["standins"] == ["embed-0"] and planned["fleet"]["b"]["standins"] == []
    planned["hosts"][0]["planned_mib"] = 7000.0  # 1192 MiB free: the copy does not fit, no stand-in
    record_standins(planned)
    assert planned["fleet"]["a"]["standins"] == []


def test_args_change_names_each_changed_flag():
    old = ["--ctx-size", "4096", "--ubatch-size", "256", "--metrics"]
    new = ["--ctx-size", "4096", "--ubatch-size", "128", "--metrics", "--chat-template", "x"]
    assert args_change(old, new) == "--ubatch-size 256 -> 128; --chat-template (absent) -> x"
    assert args_change(old, old).startswith("no argument changed")


def test_args_change_reads_whole_command_lines_and_shows_an_owned_flag_only_when_it_changed():
    """The rolling summary passes the container's whole Cmd and the fleet model's whole argv (no count of
    leading tokens to cut): equal model/port/key-file flags are left out, a new model file is shown."""
    own = ["--model", "/models/a.gguf", "--host", "0.0.0.0", "--port", "8101", "--api-key-file", "/run/key"]
    assert args_change(own + ["--ubatch-size", "256"], own + ["--ubatch-size", "128"]) == "--ubatch-size 256 -> 128"
    moved = ["--model", "/models/b.gguf"] + own[2:]
    assert args_change(own + ["--metrics"], moved + ["--metrics"]) == "--model /models/a.gguf -> /models/b.gguf"


def test_summary_has_a_block_per_server_and_says_the_fleet_left_the_inventory():
    rows = [{"host": "a", "server": "chat-0", "outcome": "replaced", "old_args": ["--ubatch-size", "256"],
             "new_args": ["--ubatch-size", "128"], "drain_s": 0.5, "load_s": 2.25,
             "before": {"ttft_s": 0.08, "tokens_per_s": 60.0}, "after": {"ttft_s": 0.09, "tokens_per_s": 58.5}}]
    text = summary(rows, {"ubatch_size": 128}, ["b.chat-1"])
    assert "a.chat-0: replaced" in text
    assert "--ubatch-size 256 -> 128" in text
    assert "drain 0.5 s, load 2.25 s, TTFT 0.08 s -> 0.09 s, tokens/s 60 -> 58.5" in text
    assert "now differs from the inventory on a.chat-0;" in text
    assert "not replaced (the rollout stopped first; they run as before): b.chat-1" in text


def test_summary_of_a_rolled_back_override_does_not_say_the_fleet_left_the_inventory():
    rows = [{"host": "a", "server": "chat-0", "outcome": "rolled back: Rolling: wait until /health answers 200: timeout",
             "old_args": ["--ubatch-size", "256"], "new_args": ["--ubatch-size", "128"], "drain_s": 0.5,
             "load_s": None, "before": {"ttft_s": 0.08, "tokens_per_s": 60.0}, "after": {}},
            {"host": "a", "server": "chat-1", "outcome": "not replaced, left as it runs: drain timeout",
             "old_args": [], "new_args": [], "drain_s": None, "load_s": None, "before": {}, "after": {}}]
    text = summary(rows, {"ubatch_size": 128})
    assert "a.chat-0: rolled back" in text
    assert "differs from the inventory" not in text
    assert "no server runs it" in text
