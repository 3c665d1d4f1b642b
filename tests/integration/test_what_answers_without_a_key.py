"""What every port of the lab fleet answers to a client that holds no key (docs/gateway.md, "What
answers without a key").

Health and metrics may answer anyone who can reach the port (and, on the LiteLLM instances' loopback
ports only, two static answers of LiteLLM: its root's liveness text and its API schema); everything else (completions, embeddings, the servers'
slots and props, the pools' backends, the gateway's API) must refuse. The table below is the
documented one, written down by hand from what each program's source and docs say, not read from
llamafleet's code; a port that starts answering something new without a key fails this test.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

# the lab's gateway, pools and aliases as its inventory declares them (read there once)
from tests.integration.test_gateway import CHAT, EMBED, GATEWAY, LAB, POOLS

# expected: OPEN (200), or the status of a refusal. KEY: 401, the key check of llama-server, HAProxy
# and LiteLLM. Prometheus refuses its lifecycle API with 403 and its admin API with 500 ("admin APIs
# disabled", its own wording); LiteLLM's documentation pages are switched off (404).
OPEN, KEY, OFF = 200, 401, 404

CHAT_BODY = {"model": CHAT, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
EMBED_BODY = {"model": EMBED, "input": "x"}
CHAT_POOL = f"http://127.0.0.1:{POOLS[CHAT]['port']}"
EMBED_POOL = f"http://127.0.0.1:{POOLS[EMBED]['port']}"
STATS = f"http://127.0.0.1:{LAB['llamafleet_gateway_stats_port']}"
LITELLM_0 = "http://127.0.0.1:4001"  # the first LiteLLM instance: the gateway's port + 1 (docs/gateway.md)
# (what, method, url, body, expected)
TABLE = [
    # a llama-server (llama-server's own rule: /health and /v1/health are public, the rest needs --api-key)
    ("chat server health", "GET", "http://127.0.0.1:8101/health", None, OPEN),
    ("chat server metrics", "GET", "http://127.0.0.1:8101/metrics", None, KEY),
    ("chat server slots", "GET", "http://127.0.0.1:8101/slots", None, KEY),
    ("chat server props", "GET", "http://127.0.0.1:8101/props", None, KEY),
    ("chat server models", "GET", "http://127.0.0.1:8101/v1/models", None, KEY),
    ("chat server completion", "POST", "http://127.0.0.1:8101/v1/chat/completions", CHAT_BODY, KEY),
    ("chat server tokenize", "POST", "http://127.0.0.1:8101/tokenize", {"content": "x"}, KEY),
    ("embedding server health", "GET", "http://127.0.0.1:8201/health", None, OPEN),
    ("embedding server embeddings", "POST", "http://127.0.0.1:8201/v1/embeddings", EMBED_BODY, KEY),
    # a pool (HAProxy): every path needs the gateway's client key
    ("chat pool health", "GET", f"{CHAT_POOL}/health", None, KEY),
    ("chat pool completion", "POST", f"{CHAT_POOL}/v1/chat/completions", CHAT_BODY, KEY),
    ("embedding pool embeddings", "POST", f"{EMBED_POOL}/v1/embeddings", EMBED_BODY, KEY),
    # the pools' stats port: HAProxy's metrics and status page
    ("pools metrics", "GET", f"{STATS}/metrics", None, OPEN),
    ("pools status page", "GET", f"{STATS}/stats", None, OPEN),
    # the gateway's port (the pools' HAProxy in front of LiteLLM): LiteLLM's liveness and readiness
    # are public, everything else needs the gateway key, LiteLLM's static pages too
    ("gateway liveness", "GET", f"{GATEWAY}/health/liveliness", None, OPEN),
    ("gateway liveness (second spelling)", "GET", f"{GATEWAY}/health/liveness", None, OPEN),
    ("gateway readiness", "GET", f"{GATEWAY}/health/readiness", None, OPEN),
    ("gateway models", "GET", f"{GATEWAY}/v1/models", None, KEY),
    ("gateway completion", "POST", f"{GATEWAY}/v1/chat/completions", CHAT_BODY, KEY),
    ("gateway embeddings", "POST", f"{GATEWAY}/v1/embeddings", EMBED_BODY, KEY),
    ("gateway health of every deployment", "GET", f"{GATEWAY}/health", None, KEY),
    ("gateway key generation", "POST", f"{GATEWAY}/key/generate", {"models": ["*"]}, KEY),
    ("gateway root", "GET", f"{GATEWAY}/", None, KEY),
    ("gateway API schema", "GET", f"{GATEWAY}/openapi.json", None, KEY),
    ("gateway API documentation page", "GET", f"{GATEWAY}/docs", None, KEY),
    # a LiteLLM instance on its loopback port (the gateway's port + 1): its own key check, and two
    # static answers that need none (its root's liveness text, its API schema)
    ("LiteLLM instance liveness", "GET", f"{LITELLM_0}/health/liveliness", None, OPEN),
    ("LiteLLM instance completion", "POST", f"{LITELLM_0}/v1/chat/completions", CHAT_BODY, KEY),
    ("LiteLLM instance key generation", "POST", f"{LITELLM_0}/key/generate", {"models": ["*"]}, KEY),
    ("LiteLLM instance root (a liveness text)", "GET", f"{LITELLM_0}/", None, OPEN),
    ("LiteLLM instance API schema (static, no data)", "GET", f"{LITELLM_0}/openapi.json", None, OPEN),
    ("LiteLLM instance documentation page", "GET", f"{LITELLM_0}/docs", None, OFF),
    ("LiteLLM instance ReDoc page", "GET", f"{LITELLM_0}/redoc", None, OFF),
    # the watchdog: its health and metrics only
    ("watchdog health", "GET", "http://127.0.0.1:9391/healthz", None, OPEN),
    ("watchdog metrics", "GET", "http://127.0.0.1:9391/metrics", None, OPEN),
    # Prometheus: reads of the fleet's metrics; no admin or lifecycle API is enabled
    ("Prometheus health", "GET", "http://127.0.0.1:9390/-/healthy", None, OPEN),
    ("Prometheus query", "GET", "http://127.0.0.1:9390/api/v1/query?query=up", None, OPEN),
    ("Prometheus reload", "POST", "http://127.0.0.1:9390/-/reload", None, 403),
    ("Prometheus shutdown", "POST", "http://127.0.0.1:9390/-/quit", None, 403),
    ("Prometheus snapshot", "POST", "http://127.0.0.1:9390/api/v1/admin/tsdb/snapshot", None, 500),
]


def status_without_a_key(method: str, url: str, body: dict | None) -> int:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code


@pytest.mark.parametrize(("what", "method", "url", "body", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_only_health_and_metrics_answer_without_a_key(lab, what, method, url, body, expected):
    status = status_without_a_key(method, url, body)
    print(f"{what:<40} {method:<4} {url:<55} -> {status}")
    assert status == expected, f"{what}: {status} to a client without a key, documented {expected}"
