"""One HTTP request to a server on this machine, its JSON answer (or its text) back, errors included."""
from __future__ import annotations

import http.client
import json


def call(port: int, method: str, path: str, body: dict | None = None, key: str | None = None,
         timeout: float = 120) -> tuple[int, object]:
    """(status, parsed JSON or the raw text) of one request to 127.0.0.1:port, with a Bearer key if given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw


def events(port: int, path: str, body: dict, key: str | None = None, timeout: float = 120) -> list:
    """The `data:` events of one streamed answer (status 200 asserted), parsed; "[DONE]" kept as that string."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request("POST", path, json.dumps(dict(body, stream=True)), headers)
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    assert resp.status == 200, (resp.status, raw[:300])
    found = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in found]
