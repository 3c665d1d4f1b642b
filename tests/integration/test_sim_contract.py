"""The simulated llama-server held to the real one: the lab's chat-0 and a simulated server started with
chat-0's own command line, asked the same things side by side.

Same routes, the same status codes and error bodies, the same response fields, the metric names the
bench and the dashboards read, and the prompt cache: one sequence of multi-turn requests from two
conversations that share a character card, sent to each, must reuse the same share of each prompt from
the slots' caches (within 5 percentage points: the simulator counts tokens with its own approximation,
so counts differ, shares may not). Nothing here is timed.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._llama_server_flags import PINNED_FLAGS
from tests.conftest import ROOT
from tests.integration.conftest import LAB_KEY_FILE, containers, lab_server_key
from tests.support.json_http import call, events

PROGRAM = os.path.join(ROOT, "roles", "llamacpp_build", "files", "sim", "llamasim.py")
# new to the lab's chat-0 in every run (a server that answered an earlier run keeps its prompts cached):
# the start of the card and of the timed prompts
RUN = random.SystemRandom().randrange(10_000, 40_000)
CARD = (f"[{RUN}] You are Mira, the keeper of the North Point lighthouse. You speak warmly and briefly, you know every "
        "ship that passes and every storm of the last forty years, and you never break character. ") * 3


def streamed(port: int, body: dict, key: str) -> list[dict | str]:
    return events(port, "/v1/chat/completions", body, key)


def flags_file(folder) -> str:
    """The pinned llama-server's flags, as the simulator's image carries them (LLAMASIM_FLAGS)."""
    flags = folder / "flags.json"
    flags.write_text(json.dumps(sorted(PINNED_FLAGS["0c1e570"])))
    return str(flags)


@contextlib.contextmanager
def simulated_chat0(flags_dir, profile: dict | None = None):
    """The simulator on a free port with chat-0's own command line (its key file as the host has it)."""
    argv = list(containers()["chat-0"]["Args"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--api-key-file") + 1] = LAB_KEY_FILE
    env = dict(os.environ, LLAMASIM_FLAGS=flags_file(flags_dir), **({"LLAMASIM_PROFILE": json.dumps(profile)} if profile else {}))
    proc = subprocess.Popen([sys.executable, PROGRAM, *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not call_ok(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else ""
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pair(lab, tmp_path_factory):
    """(real port, simulated port): chat-0 as the lab runs it, and the simulator with chat-0's argv."""
    argv = containers()["chat-0"]["Args"]
    with simulated_chat0(tmp_path_factory.mktemp("sim")) as port:
        yield int(argv[argv.index("--port") + 1]), port


def call_ok(port: int) -> bool:
    try:
        return call(port, "GET", "/health")[0] == 200
    except OSError:
        return False


def both(pair, method: str, path: str, body: dict | None = None, key: str | None = None):
    real, sim = pair
    return call(real, method, path, body, key), call(sim, method, path, body, key)


@pytest.mark.parametrize("extra", [["--no-such-flag", "1"], ["--no-jinja", "--chat-template", "no-such-template"],
                                   ["--jinja", "--no-jinja", "--chat-template", "<|start_header_id|>{{ role }}"]])
def test_a_command_line_the_real_one_refuses_is_refused_with_its_words(lab, tmp_path, extra):
    """The lab's llama-server binary (its image, no network, chat-0's flags without the key file, which the
    container would read while parsing) and the simulator, given the same command line: exit 1, same stderr."""
    chat0 = containers()["chat-0"]
    argv = list(chat0["Args"])
    del argv[argv.index("--api-key-file"):argv.index("--api-key-file") + 2]
    real = subprocess.run(["docker", "run", "--rm", "--network", "none", chat0["Config"]["Image"], *argv, *extra],
                          capture_output=True, text=True, timeout=120)
    sim = subprocess.run([sys.executable, PROGRAM, *argv, *extra], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, LLAMASIM_FLAGS=flags_file(tmp_path)))
    assert real.returncode == sim.returncode == 1, (real.stderr[-2000:], sim.stderr[-2000:])
    assert sim.stderr.strip() and sim.stderr.strip() in real.stderr, (real.stderr[-2000:], sim.stderr)


def test_health_is_public_on_both(pair):
    (rs, rb), (ss, sb) = both(pair, "GET", "/health")
    assert (rs, rb) == (ss, sb) == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/props", "/slots", "/metrics", "/v1/models", "/nothing-here"])
def test_without_the_key_both_answer_the_same_401(pair, path):
    real, sim = both(pair, "GET", path)
    assert real == sim and real[0] == 401, (real, sim)


def test_the_web_uis_path_is_public_and_not_found_on_both(pair):
    """"/" skips the key check (server-http.cpp's frontend paths); the lab's build serves no UI there."""
    real, sim = both(pair, "GET", "/")
    assert real == sim and real[0] == 404, (real, sim)


def test_props_and_slots_agree(pair):
    key = lab_server_key()
    (_, real), (_, sim) = both(pair, "GET", "/props", key=key)
    assert sim["total_slots"] == real["total_slots"]
    assert sim["default_generation_settings"]["n_ctx"] == real["default_generation_settings"]["n_ctx"]
    (_, real), (_, sim) = both(pair, "GET", "/slots", key=key)
    assert [(s["id"], s["n_ctx"], s["is_processing"]) for s in sim] == [(s["id"], s["n_ctx"], s["is_processing"]) for s in real]


def test_a_chat_completion_has_the_real_ones_fields(pair):
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5, "ignore_eos": True}
    (rs, real), (ss, sim) = both(pair, "POST", "/v1/chat/completions", body, lab_server_key())
    assert rs == ss == 200
    assert set(sim) <= set(real), set(sim) - set(real)
    assert set(sim["usage"]) <= set(real["usage"]) and set(sim["timings"]) <= set(real["timings"])
    assert sim["usage"]["completion_tokens"] == real["usage"]["completion_tokens"] == 5
    assert sim["choices"][0]["finish_reason"] == real["choices"][0]["finish_reason"]
    assert sim["choices"][0]["message"]["role"] == real["choices"][0]["message"]["role"] == "assistant"
    assert sim["object"] == real["object"]


@pytest.mark.parametrize("limits", [{"max_completion_tokens": 4}, {"n_predict": 3, "max_tokens": 6},
                                    {"max_completion_tokens": 2, "max_tokens": 6}])
def test_the_reply_length_is_read_from_the_same_field_on_both(pair, limits):
    """OpenAI's newer max_completion_tokens (GuideLLM sends it), and which field wins when there are several."""
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "ignore_eos": True, "temperature": 0, **limits}
    (rs, real), (ss, sim) = both(pair, "POST", "/v1/chat/completions", body, lab_server_key())
    assert rs == ss == 200
    assert sim["usage"]["completion_tokens"] == real["usage"]["completion_tokens"], (real["usage"], sim["usage"])


@pytest.mark.parametrize("options", [None, {"include_usage": True}], ids=["plain", "include_usage"])
def test_a_streamed_completion_comes_in_the_real_ones_chunks(pair, options):
    # greedy: a sampled token can end inside a UTF-8 character, and llama-server holds such a token back to
    # send it with the next one (one chunk fewer), where the simulator sends a chunk per token
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5, "ignore_eos": True,
            "temperature": 0, **({"stream_options": options} if options else {})}
    real, sim = (streamed(port, body, lab_server_key()) for port in pair)
    assert real[-1] == sim[-1] == "[DONE]" and len(sim) == len(real)
    assert sim[0]["choices"][0]["delta"] == real[0]["choices"][0]["delta"]   # the role chunk when the slot starts
    for mine, theirs in zip(sim[:-1], real[:-1], strict=True):   # the same fields, chunk by chunk
        assert set(mine) == set(theirs), (mine, theirs)
    tail = 3 if options else 2
    assert [e["choices"][0]["finish_reason"] if e["choices"] else None for e in sim[-tail:-1]] == \
        [e["choices"][0]["finish_reason"] if e["choices"] else None for e in real[-tail:-1]]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_llama_servers_own_completion_format_has_the_real_ones_fields(pair, stream):
    """/completion: content, stop, tokens_predicted, timings; streamed without [DONE]."""
    body = {"prompt": [1000 + i for i in range(20)], "n_predict": 4, "stream": stream, "ignore_eos": True,
            "temperature": 0}   # four chunks whatever the model would sample (see the chat stream above)
    key = lab_server_key()
    if not stream:
        (rs, real), (ss, sim) = both(pair, "POST", "/completion", body, key)
        assert rs == ss == 200
        assert set(sim) <= set(real), set(sim) - set(real)
        assert sim["tokens_predicted"] == real["tokens_predicted"] == 4 and sim["stop"] is real["stop"] is True
        return
    for port in pair:
        parsed = events(port, "/completion", body, key)
        assert "[DONE]" not in parsed
        assert [e["stop"] for e in parsed] == [False] * 4 + [True], (port, parsed)


def test_tokenize_answers_in_the_real_ones_shape(pair):
    """/tokenize, which the embedding pools count an input with: {"tokens": [ids]}, add_special adding
    the model's special tokens on both (the counts themselves differ: the simulator's tokenizer is an
    approximation)."""
    key = lab_server_key()
    simulated = {}
    for add_special in (False, True):
        (rs, real), (ss, sim) = both(pair, "POST", "/tokenize", {"content": "a lamp", "add_special": add_special}, key)
        assert rs == ss == 200 and set(real) == set(sim) == {"tokens"}
        assert all(isinstance(t, int) for t in real["tokens"] + sim["tokens"])
        simulated[add_special] = sim["tokens"]
    assert len(simulated[True]) > len(simulated[False])


def test_a_prompt_over_the_slots_context_is_the_same_error(pair):
    key = lab_server_key()
    n_ctx = call(pair[0], "GET", "/props", key=key)[1]["default_generation_settings"]["n_ctx"]
    body = {"prompt": [1000 + i % 500 for i in range(n_ctx)], "n_predict": 1}
    (rs, real), (ss, sim) = both(pair, "POST", "/completion", body, key)
    assert rs == ss == 400
    assert sim["error"]["type"] == real["error"]["type"] == "exceed_context_size_error"
    assert sim["error"]["message"] == real["error"]["message"]


def test_the_metrics_the_fleet_reads_exist_on_both(pair):
    key = lab_server_key()
    (_, real), (_, sim) = both(pair, "GET", "/metrics", key=key)
    names = {label: {line.split()[0] for line in text.splitlines() if line.startswith("llamacpp:")}
             for label, text in (("real", real), ("sim", sim))}
    assert names["sim"] <= names["real"], names["sim"] - names["real"]
    assert {"llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total", "llamacpp:requests_processing",
            "llamacpp:n_busy_slots_per_decode"} <= names["sim"]


def test_the_same_conversations_reuse_the_same_share_of_each_prompt(pair, capsys):
    """Two conversations with one character card, three turns each, in turn: which slot each turn finds
    and how much of its prompt is cached follow llama-server's slot selection on both servers."""
    key = lab_server_key()
    # each server's conversations go on with its own replies, as a client's do
    history = {(label, name): [{"role": "system", "content": CARD}] for label in ("real", "sim") for name in ("a", "b")}
    questions = ["Good evening, Mira.", "Which ship passed last night?", "Was the sea rough?"]
    shares: dict[str, list[float]] = {"real": [], "sim": []}
    for question in questions:
        for name in ("a", "b"):
            for label, port in zip(("real", "sim"), pair, strict=True):
                messages = history[(label, name)]
                messages.append({"role": "user", "content": f"({name}) {question}"})
                status, body = call(port, "POST", "/v1/chat/completions",
                                    {"messages": messages, "max_tokens": 8, "ignore_eos": True, "temperature": 0}, key)
                assert status == 200, body
                timings = body["timings"]
                shares[label].append(timings["cache_n"] / (timings["cache_n"] + timings["prompt_n"]))
                messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    with capsys.disabled():
        print("\n  prompt share reused from the cache, real vs simulated: " + ", ".join(
            f"{r:.2f}/{s:.2f}" for r, s in zip(shares["real"], shares["sim"], strict=True)))
    for r, s in zip(shares["real"], shares["sim"], strict=True):
        assert abs(r - s) <= 0.05, shares


def alone(port: int, key: str, first_token: int) -> dict:
    """One /completion alone, streamed: 200 prompt tokens (none cached: a first token new to the server), 32 generated.
    TTFT and tokens/s after the first as the client sees them, and the server's own prompt timing."""
    body = {"prompt": [first_token] + [1000 + (i * 7) % 4000 for i in range(199)], "n_predict": 32, "stream": True,
            "cache_prompt": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.monotonic()
    conn.request("POST", "/completion", json.dumps(body), {"Authorization": f"Bearer {key}"})
    resp = conn.getresponse()
    arrivals, last = [], None
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event.get("stop"):
                last = event
            elif event.get("tokens"):
                arrivals.append(time.monotonic())
    conn.close()
    return {"ttft": arrivals[0] - start, "tps": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]),
            "prompt_tps": last["timings"]["prompt_n"] / (last["timings"]["prompt_ms"] / 1000)}


def test_given_the_real_servers_speeds_alone_the_simulator_matches_its_ttft_and_tokens_per_second(lab, tmp_path, capsys):
    """chat-0 measured alone (median of 3), its prefill rate and step time given to a simulator as its
    profile; the simulator's TTFT and tokens/s alone, as the client sees them, within 15% of chat-0's."""
    key = lab_server_key()
    argv = containers()["chat-0"]["Args"]
    real_port = int(argv[argv.index("--port") + 1])
    runs = [alone(real_port, key, RUN + i) for i in range(3)]
    real = {k: statistics.median(r[k] for r in runs) for k in ("ttft", "tps", "prompt_tps")}
    profile = {"prefill_tps": real["prompt_tps"], "decode_s": [1 / real["tps"]]}
    with simulated_chat0(tmp_path, profile) as port:
        sims = [alone(port, key, RUN + i) for i in range(3)]
    sim = {k: statistics.median(r[k] for r in sims) for k in ("ttft", "tps")}
    with capsys.disabled():
        print(f"\n  alone, chat-0 vs simulated (its speeds as the profile): TTFT {real['ttft']:.3f} vs {sim['ttft']:.3f} s, "
              f"tokens/s {real['tps']:.1f} vs {sim['tps']:.1f} (200 prompt tokens, 32 generated, median of 3)")
    assert sim["ttft"] == pytest.approx(real["ttft"], rel=0.15)
    assert sim["tps"] == pytest.approx(real["tps"], rel=0.15)
