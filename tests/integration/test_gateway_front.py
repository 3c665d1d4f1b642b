"""The gateway's port as a client library sees it, and a LiteLLM crash under load.

The official `openai` Python client, pointed at the lab gateway, must raise the exception class an
application branches on: AuthenticationError for a wrong or missing key, NotFoundError for a model
the gateway does not serve, BadRequestError for a prompt over the slot's context or an embedding
input over the server's batch. The expected
classes and codes are OpenAI's own (its API reference: 401 invalid_api_key, 404 model_not_found).

Then the gateway's two LiteLLM instances: one is killed with SIGKILL from the host (as the kernel's OOM
killer does) while requests arrive, and no request may fail. Figures are printed, not asserted on time.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request

import openai
import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.conftest import lab_server_key, watchdog_holds_off
from tests.integration.test_gateway import (
    CHAT,
    EMBED,
    GATEWAY,
    KEY,
    TEXT,
    poisson_load,
    pool_stats,
    post,
    report,
    total_sessions,
)
from tests.support.json_http import call

LITELLM = {"llamafleet-litellm-0": 4001, "llamafleet-litellm-1": 4002}  # the lab's instances (docs/gateway.md)
FRONT = "llamafleet_litellm"  # the front's backend in the pools' HAProxy (roles/gateway_pools)
# The crash tests' load: twice the first user's 30 requests a minute. At 2 requests/s the lab's 2 cores,
# busy with the killed instance's 8-s start, left 16 requests waiting at the 4-slot pool (4 busy), which then sheds
# (429, by design): that measured the lab's cores, not the crash.
RATE = 1.0


def client(key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{GATEWAY}/v1", api_key=key, max_retries=0, timeout=120)


def chat(key: str = KEY, model: str = CHAT, content: str = "Name a colour.", max_tokens: int = 4):
    return client(key).chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                               max_tokens=max_tokens)


def test_the_openai_client_gets_an_answer_with_the_gateway_key(lab):
    reply = chat()
    assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
    vector = client(KEY).embeddings.create(model=EMBED, input="a lamp").data[0].embedding
    assert len(vector) == 640  # Gemma 3 270M: 640 dimensions


@pytest.mark.parametrize("key", ["sk-wrong-key-0000000000", KEY.upper()],
                         ids=["wrong key", "the key in capitals"])
def test_a_wrong_or_missing_key_is_an_authentication_error_and_reaches_no_server(lab, key):
    before = total_sessions()
    with pytest.raises(openai.AuthenticationError) as exc:
        chat(key)
    assert exc.value.status_code == 401 and exc.value.code == "invalid_api_key", exc.value.body
    with pytest.raises(openai.AuthenticationError):
        client(key).embeddings.create(model=EMBED, input="x")
    assert total_sessions() == before
    # no Authorization header at all (a client that forgot it): the same OpenAI error body
    status, body = post(f"{GATEWAY}/v1/chat/completions", {"model": CHAT, "messages": []}, None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body


def test_an_unknown_model_is_not_found_with_its_name(lab):
    with pytest.raises(openai.NotFoundError) as exc:
        chat(model="gpt-4o")
    assert exc.value.code == "model_not_found" and "gpt-4o" in exc.value.message, exc.value.body
    with pytest.raises(openai.NotFoundError):
        client(KEY).embeddings.create(model="text-embedding-3-small", input="x")
    # a name that would break a hand-built JSON body comes back escaped, as valid JSON
    with pytest.raises(openai.NotFoundError) as exc:
        chat(model='a"b\\c')
    assert exc.value.body["param"] == "model" and 'a"b\\c' in exc.value.message


def test_a_prompt_over_the_slots_context_is_a_bad_request_with_llama_servers_reason(lab):
    # the lab's chat servers: ctx_size 4096 over 2 slots = 2048 tokens a slot; this prompt is about 3,000
    with pytest.raises(openai.BadRequestError) as exc:
        chat(content="lamp " * 3000)
    assert "exceeds the available context size" in exc.value.message, exc.value.body


# The lab's embedding servers take an input of at most 512 tokens: ubatch_size and batch_size 512 in
# inventory/lab/group_vars/llamafleet/lab.yml (llama-server's own limit for an embedding, one batch).
EMBED_LIMIT = 512
EMBED_SERVER = 8201   # embed-0, whose own tokenizer counts the inputs below


def lamps(tokens: int) -> str:
    """A text of exactly `tokens` tokens as the embedding server counts it (/tokenize with add_special,
    as /v1/embeddings tokenizes an input)."""
    def count(n: int) -> int:
        return len(call(EMBED_SERVER, "POST", "/tokenize", {"content": "lamp " * n, "add_special": True},
                        lab_server_key())[1]["tokens"])
    n = tokens
    while (counted := count(n)) > tokens:
        n -= 1
    assert counted == tokens, f"no run of 'lamp ' counts {tokens} tokens"
    return "lamp " * n


def embedding_slots_taken() -> int:
    """Requests the embedding pool has sent to its servers so far (HAProxy's sessions per server)."""
    return sum(n for name, n in total_sessions().items() if name.startswith(f"{EMBED}/"))


def test_an_embedding_input_over_the_servers_batch_is_refused_before_it_reaches_a_server(lab):
    """At the limit, the input is embedded; one token over, the pool answers 400 (BadRequestError) with
    the count and the limit, and no server gets the request. Inputs of every shape the embeddings API
    takes: a string, a list of strings, token ids. An input larger than HAProxy's buffer (16 KiB) is not
    counted at the pool; the server's own check refuses it, and the pool passes that on as 400 too."""
    assert len(client(KEY).embeddings.create(model=EMBED, input=lamps(EMBED_LIMIT)).data[0].embedding) == 640
    over = lamps(EMBED_LIMIT + 1)
    for shape, tokens in ((over, EMBED_LIMIT + 1), (["a lamp", over], EMBED_LIMIT + 1),
                          ([1000] * (EMBED_LIMIT + 1), EMBED_LIMIT + 1), ("lamp " * 2000, 2002)):
        before = embedding_slots_taken()
        with pytest.raises(openai.BadRequestError) as exc:
            client(KEY).embeddings.create(model=EMBED, input=shape)
        assert embedding_slots_taken() == before, "the over-limit input reached a server"
        assert f"input ({tokens} tokens) is too large to process" in exc.value.message, exc.value.body
        assert f"at most {EMBED_LIMIT} tokens per input" in exc.value.message, exc.value.body
    before = embedding_slots_taken()
    with pytest.raises(openai.BadRequestError) as exc:
        client(KEY).embeddings.create(model=EMBED, input="lamp " * 4000)
    assert embedding_slots_taken() == before + 1 and "increase the physical batch size" in exc.value.message, \
        exc.value.body
    assert len(client(KEY).embeddings.create(model=EMBED, input="a lamp").data[0].embedding) == 640


def reload_like_the_role(container: str) -> None:
    """Run roles/gateway_pools' reload handler's command, as Ansible would, and let the new worker start."""
    with open(os.path.join(ROOT, "roles", "gateway_pools", "handlers", "main.yml"), encoding="utf-8") as handle:
        [handler] = [h for h in yaml.safe_load(handle) if h["name"] == "Reload the pools"]
    argv = [a.replace("{{ gateway_pools_container_name }}", container) for a in handler["ansible.builtin.command"]["argv"]]
    subprocess.run(argv, capture_output=True, check=True)
    time.sleep(2)


def container_state(name: str) -> tuple[int, int]:
    """(host PID of the container's main process, Docker's restart count)."""
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}} {{.RestartCount}}", name],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def both_up() -> bool:
    stats = pool_stats()
    return all(stats[(FRONT, name.removeprefix("llamafleet-"))]["status"] == "UP" for name in LITELLM)


def wait_both_up(seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not both_up():
        assert time.monotonic() < deadline, f"the gateway's instances are not both up {what}"
        time.sleep(1)


def test_a_litellm_crash_under_load_fails_no_request(lab, capsys):
    wait_both_up(60, "before the crash")  # a restart of an earlier test may still be settling
    victim = "llamafleet-litellm-0"
    pid, restarts = container_state(victim)
    before = pool_stats()[(FRONT, "BACKEND")]
    outcome: dict = {}

    def crash_later() -> None:
        time.sleep(6)  # while the load runs
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while not answers(LITELLM[victim]) and time.monotonic() - killed < 90:
            time.sleep(0.2)
        outcome["back_s"] = time.monotonic() - killed

    def one(i: int) -> float:
        start = time.monotonic()
        status, body = post(f"{GATEWAY}/v1/chat/completions",
                            {"model": CHAT, "messages": [{"role": "user", "content": f"Request {i}. {TEXT[:300]}"}],
                             "max_tokens": 8}, KEY, timeout=120)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {str(body)[:200]}")
        return time.monotonic() - start

    helper = threading.Thread(target=crash_later)
    helper.start()
    latencies, errors = poisson_load(RATE, 24, one, seed=7)
    helper.join(timeout=120)
    after = pool_stats()[(FRONT, "BACKEND")]
    _, restarts_after = container_state(victim)
    retried = int(after["wretr"] or 0) - int(before["wretr"] or 0)
    redispatched = int(after["wredis"] or 0) - int(before["wredis"] or 0)
    report(capsys, f"LiteLLM crash (SIGKILL to {victim}'s main process) under {RATE:g} requests/s for 24 s: "
                   f"{len(latencies)} answered, {len(errors)} failed; the front retried {retried} and redispatched "
                   f"{redispatched}; {victim} answered again {outcome.get('back_s', float('nan')):.1f} s after the kill")
    assert restarts_after == restarts + 1, "the instance was not killed and restarted: the test proved nothing"
    assert not errors, errors[:3]


def test_a_crash_of_the_front_cuts_requests_in_flight_which_the_openai_clients_retries_recover(lab, capsys):
    """The front is one HAProxy process (the pools'); SIGKILL to it cuts the requests in flight on it.
    Half the load comes from a client that never retries, half from the `openai` client with its default
    2 retries on a connection error: those must all be answered. Docker restarts HAProxy, also after the
    pools were reloaded as the role's handler reloads them (a `docker kill --signal` there made Docker
    leave the next crashed HAProxy down)."""
    victim = "llamafleet-pools"
    reload_like_the_role(victim)
    pid, restarts = container_state(victim)
    retrying = openai.OpenAI(base_url=f"{GATEWAY}/v1", api_key=KEY, timeout=120)  # the client's defaults
    assert retrying.max_retries == 2
    failed: dict[str, list[str]] = {"without retries": [], "openai client": []}

    def one(i: int) -> float:
        content = f"Request {i}. {TEXT[:300]}"
        if i % 2:
            try:
                retrying.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": content}], max_tokens=8)
            except openai.APIError as exc:
                failed["openai client"].append(f"{type(exc).__name__}: {exc}")
            return 0.0
        try:
            status, _ = post(f"{GATEWAY}/v1/chat/completions",
                             {"model": CHAT, "messages": [{"role": "user", "content": content}], "max_tokens": 8}, KEY)
            if status != 200:
                failed["without retries"].append(f"HTTP {status}")
        except OSError as exc:
            failed["without retries"].append(f"{type(exc).__name__}: {exc}")
        return 0.0

    def crash_later() -> None:
        time.sleep(6)
        os.kill(pid, signal.SIGKILL)

    helper = threading.Thread(target=crash_later)
    helper.start()
    sent, errors = poisson_load(RATE, 24, one, seed=7)
    helper.join(timeout=60)
    _, restarts_after = container_state(victim)
    report(capsys, f"front crash (SIGKILL to {victim}'s HAProxy) under {RATE:g} requests/s for 24 s: {len(sent)} sent; failed "
                   + ", ".join(f"{kind} {len(items)} of {len(sent) // 2 + (kind == 'openai client') * (len(sent) % 2)}"
                               for kind, items in failed.items()))
    assert restarts_after == restarts + 1, "HAProxy was not killed and restarted: the test proved nothing"
    assert not errors and not failed["openai client"], (errors + failed["openai client"])[:3]
    wait_both_up(60, "after the front's restart")


def test_no_instance_up_is_a_503_with_retry_after_in_openais_format(lab):
    with watchdog_holds_off(*LITELLM):  # the watchdog would start them again within seconds
        subprocess.run(["docker", "stop", "-t", "2", *LITELLM], capture_output=True, check=True)
        try:
            deadline = time.monotonic() + 30
            while any(pool_stats()[(FRONT, name.removeprefix("llamafleet-"))]["status"] == "UP" for name in LITELLM):
                assert time.monotonic() < deadline, "the front still sees an instance up"
                time.sleep(0.5)
            with pytest.raises(openai.InternalServerError) as exc:
                chat()
            assert exc.value.status_code == 503 and exc.value.response.headers["Retry-After"] == "5", exc.value.body
            assert exc.value.body["type"] == "server_error"
        finally:
            subprocess.run(["docker", "start", *LITELLM], capture_output=True, check=True)
    wait_both_up(90, "after their start")
