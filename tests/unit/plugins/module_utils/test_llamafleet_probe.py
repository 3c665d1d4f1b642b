"""The probe's readers on llama-server's own formats, and its waits and bounds with a fake clock."""
from __future__ import annotations

import pytest

from ansible_collections.llamafleet.fleet.plugins.module_utils.llamafleet_probe import (
    ProbeError,
    best_of,
    busy_slots,
    parse_metrics,
    parse_stream,
    regression,
    seconds_since,
    wait_for,
)

# /metrics of llama-server (tools/server/README.md: llamacpp:* gauges and counters, no labels)
METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1520
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 0
"""


def test_metrics_are_read_by_name():
    metrics = parse_metrics(METRICS)
    assert metrics["llamacpp:requests_processing"] == 2
    assert metrics["llamacpp:prompt_tokens_total"] == 1520
    assert "llamacpp:requests_deferred" in metrics


def test_busy_slots_counts_is_processing():
    slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}, {"id": 2, "is_processing": True}]
    assert busy_slots(slots) == 2
    assert busy_slots([]) == 0


class Clock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def sse(*contents, usage=None):
    lines = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}\n', b"\n"]
    for c in contents:
        lines += [f'data: {{"choices":[{{"index":0,"delta":{{"content":"{c}"}}}}]}}\n'.encode(), b"\n"]
    if usage:
        lines.append(f'data: {{"choices":[],"usage":{{"completion_tokens":{usage}}}}}\n'.encode())
    lines.append(b"data: [DONE]\n")
    return lines


def test_stream_ttft_and_decode_rate():
    # request sent at t=10.0; tokens at 10.25, 10.35, 10.45, 10.55, 10.65: TTFT 0.25 s,
    # 4 tokens after the first in 0.4 s = 10 tokens/s
    clock = Clock([10.25, 10.35, 10.45, 10.55, 10.65])
    out = parse_stream(sse("He", "llo", " the", "re", "!"), clock=clock, start=10.0)
    assert out["ttft_s"] == pytest.approx(0.25)
    assert out["tokens"] == 5
    assert out["tokens_per_s"] == pytest.approx(10.0)
    assert out["text"] == "Hello there!"


def test_stream_prefers_the_usage_token_count():
    # 3 chunks but the server counted 9 tokens in 0.4 s after the first: 8 / 0.4 = 20 tokens/s
    clock = Clock([1.1, 1.3, 1.5])
    out = parse_stream(sse("a", "b", "c", usage=9), clock=clock, start=1.0)
    assert out["tokens"] == 9 and out["tokens_per_s"] == pytest.approx(20.0)


def test_an_empty_or_failed_stream_is_an_error():
    with pytest.raises(ProbeError, match="no token"):
        parse_stream(sse(), start=0.0)
    with pytest.raises(ProbeError, match="error in the stream"):
        parse_stream([b'data: {"error": {"code": 500, "message": "boom"}}\n'], start=0.0)


def test_wait_for_is_bounded():
    t = [0.0]

    def clock():
        return t[0]

    def sleep(s):
        t[0] += s

    ok, waited = wait_for(lambda: False, timeout=3, interval=1, clock=clock, sleep=sleep)
    assert not ok and waited == 3
    calls = iter([False, False, True])
    ok, waited = wait_for(lambda: next(calls), timeout=10, interval=0.5, clock=clock, sleep=sleep)
    assert ok and waited == 1.0


def test_best_of_takes_the_lowest_ttft_and_highest_rate():
    out = best_of([{"ttft_s": 0.3, "tokens_per_s": 50.0}, {"ttft_s": 0.2, "tokens_per_s": 40.0},
                   {"ttft_s": 0.4, "tokens_per_s": 55.0}])
    assert out["ttft_s"] == 0.2 and out["tokens_per_s"] == 55.0 and out["runs"] == 3


@pytest.mark.parametrize("now,bound,worse", [
    ({"ttft_s": 0.15, "tokens_per_s": 40.0}, 0.5, []),            # 0.15 <= 0.1 x 1.5; 40 >= 60 / 1.5
    ({"ttft_s": 0.16, "tokens_per_s": 60.0}, 0.5, ["TTFT"]),      # 0.16 > 0.15
    ({"ttft_s": 0.10, "tokens_per_s": 39.0}, 0.5, ["tokens/s"]),  # 39 < 40
    ({"ttft_s": 0.30, "tokens_per_s": 20.0}, 1.0, ["TTFT", "tokens/s"]),  # 0.3 > 0.2; 20 < 30
])
def test_regression_bound(now, bound, worse):
    reasons = regression({"ttft_s": 0.10, "tokens_per_s": 60.0}, now, bound)
    assert len(reasons) == len(worse)
    for reason, what in zip(reasons, worse, strict=True):
        assert what in reason


def test_embedding_smoke_has_no_rate_to_compare():
    assert regression({"ttft_s": 0.05, "tokens_per_s": None}, {"ttft_s": 0.06, "tokens_per_s": None}, 0.5) == []


@pytest.mark.parametrize("iso,now,expected", [
    # 2026-11-27T14:10:05Z is epoch 1795788605 (date -u -d 2026-11-27T14:10:05Z +%s)
    ("2026-11-27T14:10:05.250000000Z", 1795788607.75, 2.5),
    ("2026-11-27T14:10:05Z", 1795788606.0, 1.0),
    ("2026-11-27T15:10:05.5+01:00", 1795788606.0, 0.5),
])
def test_seconds_since_a_docker_timestamp(iso, now, expected):
    assert seconds_since(iso, now) == pytest.approx(expected)


def test_a_timestamp_that_is_not_rfc3339_is_refused():
    with pytest.raises(ProbeError, match="started_at"):
        seconds_since("yesterday", 0.0)
