"""Graceful overload: three times the load the plan says the lab's chat pool carries, for 30 s, through
the gateway (60 s in the figures of docs/gateway.md; 30 s fill the bounded queue as well, in half the suite's time).

Every request must be answered, with a reply or with 429/503 (and Retry-After), inside the client's
90 s; no container may restart. The pool sheds what its bounded queue cannot hold at once (429), so the
queue never holds more than a few seconds of work and the fleet serves normally soon after the load
drops. Printed, not asserted on time: the shed share, the TTFT of what was served, LiteLLM's and
HAProxy's peak memory, and how long after the load the first normal reply came. Requests go through the
official `openai` client, which must raise RateLimitError for a shed request.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time

import openai
import yaml

from tests.conftest import ROOT
from tests.integration.test_gateway import CHAT, GATEWAY, KEY, TEXT, poisson_load, report

SECONDS = 30
OVERLOAD = 3.0
CLIENT_TIMEOUT = 90  # the first user's clients wait 90 s (docs/gateway.md)
WATCHED = ("llamafleet-litellm-0", "llamafleet-litellm-1", "llamafleet-pools")


def declared_reply_tokens() -> int:
    """The reply length the lab declares for its chat model (llamafleet_workload), which the plan's service time is for."""
    with open(os.path.join(ROOT, "inventory", "lab", "group_vars", "llamafleet", "lab.yml"), encoding="utf-8") as handle:
        workload = yaml.safe_load(handle)["llamafleet_workload"]
    return int(next(iter(workload.values()))["reply_tokens"])


def planned_capacity() -> tuple[float, dict]:
    """Requests/s the chat pool carries at 100% busy by the plan (slots / seconds a request holds a slot)."""
    report_dir = os.environ.get("LLAMAFLEET_REPORT_DIR", os.path.join(ROOT, "reports", "plan"))
    with open(os.path.join(report_dir, "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    row = next(w for w in plan["workloads"] if w.get("pool") == CHAT)
    return row["slots"] / row["service_s"], row


def restart_counts() -> dict[str, int]:
    names = subprocess.run(["docker", "ps", "-a", "--filter", "name=llamafleet-", "--format", "{{.Names}}"],
                           capture_output=True, text=True, check=True).stdout.split()
    out = subprocess.run(["docker", "inspect", "-f", "{{.Name}} {{.RestartCount}}", *names],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return {line.split()[0].lstrip("/"): int(line.split()[1]) for line in out if line.strip()}


def memory_mib() -> dict[str, float]:
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *WATCHED],
                         capture_output=True, text=True, check=True).stdout
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / 1024 / 1024}
    result = {}
    for line in out.splitlines():
        name, used = line.split()[0], line.split()[1]
        unit = next(u for u in units if used.endswith(u))
        result[name] = float(used[: -len(unit)]) * units[unit]
    return result


def test_three_times_the_planned_load_is_served_or_shed_and_nothing_restarts(lab, capsys):
    capacity, row = planned_capacity()
    rate = OVERLOAD * capacity
    reply_tokens = declared_reply_tokens()  # and TEXT is about the declared 200 prompt tokens
    client = openai.OpenAI(base_url=f"{GATEWAY}/v1", api_key=KEY, max_retries=0, timeout=CLIENT_TIMEOUT)
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()
    peaks: dict[str, float] = {}
    loading = threading.Event()
    loading.set()

    def sample() -> None:
        while loading.is_set():
            for name, mib in memory_mib().items():
                peaks[name] = max(peaks.get(name, 0.0), mib)
            time.sleep(2)

    def one(i: int) -> float:
        start = time.monotonic()
        try:
            stream = client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": f"Request {i}. {TEXT} Go on:"}],
                max_tokens=reply_tokens, stream=True, extra_body={"ignore_eos": True})
            ttft = None
            for chunk in stream:
                if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                    ttft = time.monotonic() - start
            outcome = ("served", ttft if ttft is not None else float("nan"))
        except openai.RateLimitError as exc:
            assert exc.response.headers.get("Retry-After"), "a 429 without Retry-After"
            outcome = ("429", time.monotonic() - start)
        except openai.InternalServerError as exc:
            if exc.status_code != 503 or not exc.response.headers.get("Retry-After"):
                raise
            outcome = ("503", time.monotonic() - start)
        with lock:
            outcomes.append(outcome)
        return outcome[1]

    def probe_after_the_load(load_ends: float) -> None:
        """From the last arrival on, a short request every 0.5 s until one is served."""
        time.sleep(max(0.0, load_ends - time.monotonic()))
        while time.monotonic() - load_ends < 120:
            try:
                client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Name a colour."}],
                                               max_tokens=4)
                outcome_after["recovered_s"] = time.monotonic() - load_ends
                return
            except (openai.RateLimitError, openai.InternalServerError):
                time.sleep(0.5)

    outcome_after: dict = {}
    before = restart_counts()
    sampler = threading.Thread(target=sample)
    sampler.start()
    prober = threading.Thread(target=probe_after_the_load, args=(time.monotonic() + SECONDS,))
    prober.start()
    try:
        _, errors = poisson_load(rate, SECONDS, one, seed=11)
    finally:
        loading.clear()
        sampler.join(timeout=30)
        prober.join(timeout=150)
    recovered = outcome_after.get("recovered_s")
    after = restart_counts()

    served = [t for kind, t in outcomes if kind == "served"]
    shed = [(kind, t) for kind, t in outcomes if kind != "served"]
    total = len(outcomes) + len(errors)
    ttft = (f"TTFT of the served p50 {statistics.median(served):.2f} s, max {max(served):.2f} s"
            if served else "nothing served")
    shed_s = f"answered within {max(t for _, t in shed):.2f} s" if shed else "none"
    report(capsys, f"overload: {rate:.2f} requests/s for {SECONDS} s = {OVERLOAD:g} x the plan's {capacity:.2f}/s "
                   f"({row['slots']} slots, {row['service_s']:.2f} s a request); {total} sent: {len(served)} served, "
                   f"{sum(k == '429' for k, _ in shed)} shed 429, {sum(k == '503' for k, _ in shed)} shed 503 "
                   f"({len(shed) / max(total, 1):.0%}; {shed_s}), {len(errors)} failed otherwise; {ttft}; peak memory "
                   + ", ".join(f"{n} {m:.0f} MiB" for n, m in sorted(peaks.items()))
                   + f"; first normal reply {recovered if recovered is not None else float('nan'):.1f} s after the load")
    assert not errors, errors[:3]
    assert {n: after.get(n) for n in before} == before, "a container restarted under the overload"
    assert recovered is not None, "the gateway did not serve again within 120 s of the load dropping"
