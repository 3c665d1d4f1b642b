"""The simulated llama-server as a process: its command line, HTTP answers and prompt reuse.

The bodies and codes expected here are llama-server 0c1e570's (tools/server/server-http.cpp and
server-common.cpp, quoted per test). Holding the simulator to a running llama-server, route by route,
is the contract test's job (issue 18); this keeps the program itself honest and fast to check.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._llama_server_flags import PINNED_FLAGS
from tests.conftest import ROOT
from tests.support.json_http import call, events

PROGRAM = os.path.join(ROOT, "roles", "llamacpp_build", "files", "sim", "llamasim.py")
KEY = "sim-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def flags_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "flags.json"
    path.write_text(json.dumps(sorted(PINNED_FLAGS["0c1e570"])))
    return str(path)


def start(flags_file: str, tmp_path, *args: str, profile: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    env = dict(os.environ, LLAMASIM_FLAGS=flags_file,
               LLAMASIM_PROFILE=json.dumps(profile or {"decode_s": [0.001], "prefill_tps": 100000.0}))
    proc = subprocess.Popen([sys.executable, PROGRAM, "--model", "/models/m.gguf", "--host", "127.0.0.1", "--port",
                             str(port), "--api-key-file", str(key_file), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.stderr.read())


@pytest.fixture
def chat_server(flags_file, tmp_path):
    proc, port = start(flags_file, tmp_path, "--ctx-size", "512", "--parallel", "2", "--metrics", "--cache-ram", "0")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_a_flag_the_pinned_llama_server_does_not_know_is_refused_as_it_refuses_it(flags_file, tmp_path):
    """common/arg.cpp: `error: invalid argument: <flag>`, and the binary exits with status 1."""
    result = subprocess.run([sys.executable, PROGRAM, "--port", "1", "--no-such-flag", "3"], capture_output=True,
                            text=True, timeout=30, env=dict(os.environ, LLAMASIM_FLAGS=flags_file))
    assert result.returncode == 1
    assert "error: invalid argument: --no-such-flag" in result.stderr


# common/arg.cpp at 0c1e570, after every flag is read (the message and its note, printed with "%s\n", exit 1)
REFUSED_TEMPLATE = ("error: the supplied chat template is not supported: {}\n"
                    "note: llama.cpp was started without --jinja, we only support commonly used templates\n\n")


@pytest.mark.parametrize("args,refused", [
    # without --jinja: a built-in name (src/llama-chat.cpp LLM_CHAT_TEMPLATES) passes, any other name does not
    (["--no-jinja", "--chat-template", "llama3"], False),
    (["--no-jinja", "--chat-template", "no-such-template"], True),
    # a template text llm_chat_detect_template recognises: Llama 3's headers, both of them needed
    (["--no-jinja", "--chat-template", "<|start_header_id|>{{ role }}<|end_header_id|>"], False),
    (["--no-jinja", "--chat-template", "<|start_header_id|>{{ role }}"], True),
    # "mistral" at the start of the text is recognised
    (["--no-jinja", "--chat-template", "mistral-like"], False),
    # with --jinja (the default, common.h use_jinja = true) the text is a Jinja template: it passes
    (["--chat-template", "no-such-template"], False),
    (["--no-jinja", "--jinja", "--chat-template", "no-such-template"], False),
    (["--jinja", "--no-jinja", "--chat-template", "no-such-template"], True),
])
def test_a_chat_template_the_server_cannot_apply_is_refused_at_start_as_it_refuses_it(flags_file, tmp_path, args, refused):
    if not refused:
        proc, port = start(flags_file, tmp_path, *args)
        proc.terminate()
        proc.wait(timeout=10)
        assert port
        return
    result = subprocess.run([sys.executable, PROGRAM, "--port", "1", *args], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, LLAMASIM_FLAGS=flags_file))
    assert (result.returncode, result.stderr) == (1, REFUSED_TEMPLATE.format(args[-1]))


def test_health_is_public_and_the_rest_wants_the_key(chat_server):
    """server-http.cpp: public endpoints /health and /v1/health; otherwise 401 Invalid API Key."""
    assert call(chat_server, "GET", "/health", key=None) == (200, {"status": "ok"})
    status, body = call(chat_server, "GET", "/props", key=None)
    assert status == 401
    assert body == {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}
    status, body = call(chat_server, "GET", "/props", key=KEY)
    assert status == 200 and body["total_slots"] == 2 and body["default_generation_settings"]["n_ctx"] == 256


def test_parallel_left_to_llama_server_is_four_slots_sharing_the_whole_context(flags_file, tmp_path):
    """llama-server's auto (--parallel unset, -1): 4 slots with a unified KV cache, so each may use all
    of --ctx-size (2000, padded to 2048 cells)."""
    proc, port = start(flags_file, tmp_path, "--ctx-size", "2000")
    try:
        status, body = call(port, "GET", "/props", key=KEY)
        assert (body["total_slots"], body["default_generation_settings"]["n_ctx"]) == (4, 2048)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_while_the_model_loads_every_route_is_503(flags_file, tmp_path):
    """middleware_server_state runs before the key check: 503 Loading model, unavailable_error."""
    proc, port = start(flags_file, tmp_path, profile={"decode_s": [0.001], "prefill_tps": 1e5, "load_s": 30})
    try:
        assert call(port, "GET", "/health", key=None) == (503, {"error": {
            "code": 503, "message": "Loading model", "type": "unavailable_error"}})
        assert call(port, "GET", "/props", key=None)[0] == 503
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_chat_reply_counts_its_tokens_and_the_next_turn_reuses_the_slot(chat_server):
    first = {"messages": [{"role": "user", "content": "Tell me about the lighthouse and its keeper."}], "max_tokens": 6}
    status, body = call(chat_server, "POST", "/v1/chat/completions", first, key=KEY)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == 6 and body["timings"]["cache_n"] == 0
    first_prompt = body["usage"]["prompt_tokens"]
    reply = body["choices"][0]["message"]["content"]
    assert reply
    turn = {"messages": first["messages"] + [{"role": "assistant", "content": reply},
                                             {"role": "user", "content": "And the ships?"}], "max_tokens": 4}
    status, body = call(chat_server, "POST", "/v1/chat/completions", turn, key=KEY)
    assert status == 200
    # the slot with the first turn is chosen by similarity: its prompt and the reply but its last token
    # (sampled, never decoded into the slot) are reused
    assert body["timings"]["cache_n"] == first_prompt + 6 - 1
    assert body["timings"]["prompt_n"] + body["timings"]["cache_n"] == body["usage"]["prompt_tokens"]


def test_a_content_of_typed_text_parts_is_the_texts_joined_by_newlines(chat_server):
    """common/chat.cpp concat_content_parts: OpenAI's typed parts reach the template as one text, the parts
    joined by a newline (GuideLLM sends its prompts so). The same prompt either way, so the same count."""
    def prompt_tokens(content) -> int:
        status, body = call(chat_server, "POST", "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": content}], "max_tokens": 1}, key=KEY)
        assert status == 200, body
        return body["usage"]["prompt_tokens"]

    joined = prompt_tokens("The lamp is lit.\nThe ships pass the rock at night.")
    assert prompt_tokens([{"type": "text", "text": "The lamp is lit."},
                          {"type": "text", "text": "The ships pass the rock at night."}]) == joined
    # a space joins the next word (" The" is one piece), a newline is a piece of its own: one token more
    assert prompt_tokens("The lamp is lit. The ships pass the rock at night.") == joined - 1
    assert prompt_tokens("The lamp is lit.") < joined
    # a newline goes before a part only once there is text: an empty first part adds none
    assert prompt_tokens([{"type": "text", "text": ""}, {"type": "text", "text": "The lamp is lit."}]) \
        == prompt_tokens("The lamp is lit.")


@pytest.mark.parametrize("limits,generated", [
    ({"max_tokens": 5}, 5),
    ({"max_completion_tokens": 4}, 4),            # OpenAI's newer name, which GuideLLM sends
    ({"n_predict": 3, "max_tokens": 7}, 3),       # server-schema.cpp: the name first, then its aliases in order
    ({"max_completion_tokens": 2, "max_tokens": 7}, 2),
])
def test_the_reply_length_is_read_as_llama_servers_schema_reads_it(chat_server, limits, generated):
    status, body = call(chat_server, "POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hello."}], **limits}, key=KEY)
    assert status == 200, body
    assert body["usage"]["completion_tokens"] == generated


def stream_events(port: int, body: dict) -> list:
    return events(port, "/v1/chat/completions", body, KEY, timeout=10)


def test_a_streamed_reply_comes_as_llama_servers_chunks(chat_server):
    """As the lab's llama-server sent them (2026-12-03): a role chunk when the slot starts, a chunk a token, the
    finishing chunk with the timings, [DONE]; with stream_options.include_usage the usage comes in one more
    chunk with no choices, and the timings with it."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    events = stream_events(chat_server, body)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert [bool(e["choices"][0]["delta"].get("content")) for e in events[1:-2]] == [True] * 5
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-2]["timings"]["predicted_n"] == 5
    assert "usage" not in events[-2] and events[-1] == "[DONE]"
    events = stream_events(chat_server, dict(body, stream_options={"include_usage": True}))
    assert events[-3]["choices"][0]["finish_reason"] == "length" and "timings" not in events[-3]
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 5 and "timings" in events[-2]


def test_a_prompt_of_the_slots_context_is_refused_with_llama_servers_error(chat_server):
    """server-context.cpp: n_tokens >= n_ctx is 'request (N tokens) exceeds the available context size'."""
    status, body = call(chat_server, "POST", "/completion", {"prompt": list(range(256)), "n_predict": 1}, key=KEY)
    assert status == 400
    assert body["error"]["type"] == "exceed_context_size_error" and body["error"]["n_ctx"] == 256
    assert body["error"]["message"].startswith("request (256 tokens) exceeds the available context size (256 tokens)")


def test_metrics_count_what_the_requests_did(chat_server):
    call(chat_server, "POST", "/completion", {"prompt": list(range(100)), "n_predict": 3}, key=KEY)
    status, text = call(chat_server, "GET", "/metrics", key=KEY)
    assert status == 200
    values = dict(line.split() for line in text.splitlines() if line.startswith("llamacpp:"))
    assert float(values["llamacpp:prompt_tokens_total"]) == 100
    assert float(values["llamacpp:tokens_predicted_total"]) == 3
    assert float(values["llamacpp:n_decode_total"]) == 3
    assert float(values["llamacpp:requests_processing"]) == 0


def test_an_embedding_over_the_physical_batch_is_llama_servers_500(flags_file, tmp_path):
    """server-context.cpp: a non-splittable input above n_ubatch: 'input (N tokens) is too large to process'."""
    proc, port = start(flags_file, tmp_path, "--embeddings", "--ubatch-size", "64", "--batch-size", "64")
    try:
        status, body = call(port, "POST", "/v1/embeddings", {"input": "a lamp"}, key=KEY)
        assert status == 200 and len(body["data"][0]["embedding"]) == 640
        status, body = call(port, "POST", "/v1/embeddings", {"input": [list(range(70))]}, key=KEY)
        assert status == 500
        assert body["error"]["message"] == ("input (70 tokens) is too large to process. increase the physical batch "
                                             "size (current batch size: 64)")
        # /tokenize with add_special counts a text as /v1/embeddings does (the embedding pool's count):
        # the text of 64 tokens so counted is embedded, the next word over is refused
        words = 0
        while len(call(port, "POST", "/tokenize", {"content": "lamp " * (words + 1), "add_special": True},
                       key=KEY)[1]["tokens"]) <= 64:
            words += 1
        assert call(port, "POST", "/v1/embeddings", {"input": "lamp " * words}, key=KEY)[0] == 200
        status, body = call(port, "POST", "/v1/embeddings", {"input": ["a", "lamp " * (words + 1)]}, key=KEY)
        assert status == 500 and "too large to process" in body["error"]["message"]
        plain = call(port, "POST", "/tokenize", {"content": "a lamp"}, key=KEY)[1]["tokens"]
        assert len(call(port, "POST", "/tokenize", {"content": "a lamp", "add_special": True},
                        key=KEY)[1]["tokens"]) == len(plain) + 2   # BOS and EOS
        assert call(port, "POST", "/tokenize", {"content": [5, "a lamp", 7]}, key=KEY)[1]["tokens"] == [5, *plain, 7]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_embedding_server_batches_one_ubatch_and_minus_one_cache_ram_is_no_limit():
    """server.cpp: with --embeddings and n_batch > n_ubatch, n_batch = n_ubatch; common/arg.cpp: --cache-ram
    -1 means no limit (0 disables it)."""
    sys.path.insert(0, os.path.dirname(PROGRAM))
    import llamasim  # noqa: PLC0415 (the program, imported as the image runs it)
    server = llamasim.Server({"--embeddings": "", "--batch-size": "2048", "--ubatch-size": "64", "--cache-ram": "-1"},
                             {}, [])
    assert server.scheduler.n_batch == 64
    assert server.scheduler.cache is not None and server.scheduler.cache.limit_tokens >= 2**40
    assert llamasim.Server({"--cache-ram": "0"}, {}, []).scheduler.cache is None


def test_version_and_help_answer_as_the_binary_does_and_exit(flags_file):
    """common/arg.cpp: --version prints `version: N (commit)` to stderr and --help the usage to stdout,
    each exiting 0; the role's flag check reads the flags from --help."""
    env = dict(os.environ, LLAMASIM_FLAGS=flags_file, LLAMASIM_REF="0c1e570")
    version = subprocess.run([sys.executable, PROGRAM, "--version"], capture_output=True, text=True, timeout=30, env=env)
    assert version.returncode == 0
    assert version.stderr.startswith("version: 0 (0c1e570)")
    usage = subprocess.run([sys.executable, PROGRAM, "--help"], capture_output=True, text=True, timeout=30, env=env)
    assert usage.returncode == 0
    assert "\n--cache-reuse\n" in usage.stdout and "\n--slot-prompt-similarity\n" in usage.stdout
    assert "--no-such-flag" not in usage.stdout


@pytest.mark.parametrize("profile,message", [
    ("{decode_s: 1}", "LLAMASIM_PROFILE is not JSON"),
    ('{"decode_s": []}', "decode_s must be a non-empty list of positive seconds, got []"),
    ('{"prefill_tps": 0, "speed": 3}', "unknown key 'speed'; prefill_tps must be a positive number, got 0"),
    ('{"load_s": -1}', "load_s must be zero or more seconds, got -1"),
])
def test_a_malformed_profile_stops_the_server_before_it_listens(flags_file, profile, message):
    port = free_port()
    result = subprocess.run([sys.executable, PROGRAM, "--port", str(port)], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, LLAMASIM_FLAGS=flags_file, LLAMASIM_PROFILE=profile))
    assert result.returncode == 1
    assert message in result.stderr
