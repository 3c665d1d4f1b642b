"""The first user's host, simulated (inventory/rehearsal, docs/sim.md): eight P106-100 declared, sixteen
simulated llama-servers deployed by the same site.yml as the lab (containers, key file, health checks,
pools, LiteLLM, watchdog, Prometheus, smoke play), then a bench through the gateway at the first user's
30 requests/min. The servers sleep what the plan says the cards take, so the figures printed here are
those of the fleet between the client and the servers, and the bench's report says so.

One bring-up per module; the rehearsal's containers are removed at its end, so the lab's tests after it
have the machine's 2 cores to themselves again.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from tests.integration.conftest import CURRENT_IMAGE, playbook
from tests.support.json_http import call, events
from tests.support.rehearsal_fleet import GATEWAY_KEY, GATEWAY_PORT, HOST, INVENTORY, bench, bring_up, sim_containers, tear_down


def lab_state() -> dict:
    """What the rehearsal must leave alone: the digest of the lab build's current-image record and of every file
    under /etc/llamafleet outside the rehearsal's own directory (the lab's key, watchdog and Prometheus
    configurations), and the id of every other llamafleet container (one the rehearsal's play recreated
    would have a new one)."""
    files = {}
    with open(CURRENT_IMAGE, "rb") as handle:   # the image the lab's servers run, as the lab's build recorded it
        files[CURRENT_IMAGE] = hashlib.sha256(handle.read()).hexdigest()
    for folder, dirs, names in os.walk("/etc/llamafleet"):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) != "/etc/llamafleet/rehearsal"]
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                files[os.path.join(folder, name)] = hashlib.sha256(handle.read()).hexdigest()
    listed = subprocess.run(["docker", "ps", "-a", "--filter", "name=^llamafleet-", "--format", "{{.Names}} {{.ID}}"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    containers = dict(line.split() for line in listed if line and not line.startswith("llamafleet-rehearsal-"))
    return {"files": files, "containers": containers}


@pytest.fixture(scope="module")
def rehearsal(lab, tmp_path_factory):
    """The rehearsal brought up beside the lab (the session's one bring-up), as a user would run both."""
    before = lab_state()
    up = bring_up(str(tmp_path_factory.mktemp("rehearsal-plan")))
    yield dict(up, lab_before=before, lab_after=lab_state())
    tear_down()


def test_the_rehearsal_beside_the_lab_changes_none_of_the_labs_files_or_containers(rehearsal):
    """Its own directories, ports and names (tests/unit/playbooks/test_deployments_apart.py): a rehearsal that
    kept the role's watchdog_config_dir rewrote the lab watchdog's config.json here."""
    assert "/etc/llamafleet/watchdog/config.json" in rehearsal["lab_before"]["files"]
    assert rehearsal["lab_after"] == rehearsal["lab_before"]


def test_every_declared_server_runs_simulated_where_a_real_one_would(rehearsal):
    found = rehearsal["containers"]
    fleet = rehearsal["plan"]["fleet"][HOST]
    assert sorted(found) == sorted([f"chat-{i}" for i in range(8)] + [f"embed-{i}" for i in range(8)])
    for server in fleet["servers"]:
        c = found[server["name"]]
        assert c["State"]["Health"]["Status"] == "healthy", (server["name"], c["State"])
        assert c["Config"]["Image"].startswith("llamafleet/llama-server:0c1e570-sim-")
        assert c["Config"]["Cmd"] == server["argv"]
        assert c["HostConfig"]["DeviceRequests"] in (None, [])      # no GPU asked for: there is none
        assert c["HostConfig"]["ReadonlyRootfs"] and c["Config"]["User"] == "10001:10001"
        profile = json.loads(dict(e.split("=", 1) for e in c["Config"]["Env"])["LLAMASIM_PROFILE"])
        assert profile == json.loads(server["env"]["LLAMASIM_PROFILE"])
        key = open(".cache/rehearsal-api-key", encoding="utf-8").read().strip()
        status, props = call(server["port"], "GET", "/props", key=key)
        assert status == 200
        # the plan's slots: parallel 3 on the chat servers, llama-server's auto 4 on the embedding ones
        assert props["total_slots"] == (3 if server["role"] == "chat" else 4)
    # planned as the cards: Q4_K_M and the embedding model fit each P106-100 with room to spare
    devices = [d for d in rehearsal["plan"]["devices"] if d["host"] == HOST]
    assert [d["device"] for d in devices] == [f"cuda:{i}" for i in range(8)] and all(d["fits"] for d in devices)
    print("\nrehearsal: " + "; ".join(f"{d['device']} {d['planned_mib']:,.0f}/{d['capacity_mib']:,} MiB" for d in devices[:1])
          + f" (x8); chat profile {fleet['servers'][0]['env']['LLAMASIM_PROFILE']}")


def test_the_gateway_answers_for_every_model_of_the_first_user(rehearsal):
    for alias in ("stheno", "lumimaid"):
        chunks = events(GATEWAY_PORT, "/v1/chat/completions",
                        {"model": alias, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16},
                        key=GATEWAY_KEY)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c != "[DONE]" and c["choices"])
        assert chunks[-1] == "[DONE]" and len(text.split()) == 16, (alias, text)
    status, body = call(GATEWAY_PORT, "POST", "/v1/embeddings", {"model": "embed", "input": "a short text"}, key=GATEWAY_KEY)
    assert status == 200 and len(body["data"][0]["embedding"]) == 768     # nomic-embed-text-v1.5's n_embd
    status, body = call(GATEWAY_PORT, "GET", "/v1/models", key="sk-not-the-key")
    assert status == 401, body


def test_a_bench_at_the_first_users_load_says_it_ran_on_simulated_servers(rehearsal, tmp_path):
    settings = {"llamafleet_bench_rate_per_min": 30, "llamafleet_bench_duration_s": 60,
                "llamafleet_bench_prompt_tokens": 500, "llamafleet_bench_reply_tokens": 256,
                "llamafleet_bench_embed_rate_per_min": 30, "llamafleet_bench_probe": False,
                "llamafleet_bench_warmup_requests": 0}
    run = bench(str(tmp_path), settings)
    result_stdout, report = run["_stdout"], run["_report"]
    everything = run["summary"]["all"]
    print(f"\nbench on the simulated first user's host (30 chat + 30 embedding requests/min through the gateway): "
          f"{everything['completed']}/{everything['requests']} answered, {everything['errors']} errors, "
          f"TTFT p50 {everything['ttft']['p50']:.2f} s p95 {everything['ttft']['p95']:.2f} s, "
          f"ITL p50 {everything['itl']['p50'] * 1000:.0f} ms")
    for group, rows in run["comparison"].items():
        for row in rows:
            print(f"  {group}: {row['figure']} plan {row['predicted']} bench {row['measured']}")
    assert "On simulated servers (llamafleet_backend: sim): " in result_stdout
    assert f"**Measured on simulated servers** (llamafleet_backend: sim on {HOST})" in report
    assert everything["errors"] == 0, run["errors"]
    assert everything["requests"] >= 40          # 30 chat + 30 embedding a minute, for a minute (Poisson)


def test_settings_of_a_real_gpu_host_are_refused_before_anything_changes(rehearsal):
    # a variable the plan filter forwards by its prefix (nvidia_container_toolkit_*), not by name
    result = playbook("site.yml", "-i", INVENTORY, "-e", '{"nvidia_container_toolkit_repo_url": "http://mirror.invalid/"}',
                      check=False)
    assert result.returncode != 0
    assert ("nvidia_container_toolkit_repo_url is set, but llamafleet_backend sim installs no NVIDIA software"
            in result.stdout)
    assert {n: c["Id"] for n, c in sim_containers().items()} == {n: c["Id"] for n, c in rehearsal["containers"].items()}


def short_gap_share(run: dict) -> float:
    """Share of the gaps between streamed chunks under 2 ms: a stream that arrived in bursts."""
    gaps = [g for r in run["requests"] if r.get("ok") and r.get("kind") == "chat" for g in r.get("itl", [])]
    assert len(gaps) >= 100, "too few streamed chunks to judge"
    return sum(g < 0.002 for g in gaps) / len(gaps)


def test_the_bench_streams_through_the_gateway_as_smoothly_as_direct(rehearsal, tmp_path):
    """The same bench (seed, rate, lengths) twice: straight to the simulated servers, then through the
    gateway (front, LiteLLM, pool). The servers sleep what the plan says, on a clock of their own, so
    the difference is the path through the gateway on this machine. Printed: ITL and TTFT side by side.
    Fails when the gateway's stream arrives in bursts (a quarter of its gaps under 2 ms while the
    servers' are not) or the bench warns about it; nothing about time is asserted."""
    settings = {"llamafleet_bench_rate_per_min": 30, "llamafleet_bench_duration_s": 30,
                "llamafleet_bench_prompt_tokens": 200, "llamafleet_bench_reply_tokens": 128,
                "llamafleet_bench_embed_rate_per_min": 0, "llamafleet_bench_probe": False,
                "llamafleet_bench_warmup_requests": 0, "llamafleet_bench_seed": 3}
    direct = bench(str(tmp_path / "direct"), dict(settings, llamafleet_bench_direct=True))
    gateway = bench(str(tmp_path / "gateway"), settings)
    d, g = direct["summary"]["all"], gateway["summary"]["all"]
    print("\nbench on simulated servers, 30 chat requests/min, 200-token prompts, 128-token replies, 30 s:")
    for name, figure, scale, unit in (("ITL p50", ("itl", "p50"), 1000, "ms"), ("ITL p95", ("itl", "p95"), 1000, "ms"),
                                      ("TTFT p50", ("ttft", "p50"), 1000, "ms"), ("TTFT p95", ("ttft", "p95"), 1000, "ms")):
        dv, gv = d[figure[0]][figure[1]] * scale, g[figure[0]][figure[1]] * scale
        print(f"  {name}: direct {dv:.1f} {unit}, through the gateway {gv:.1f} {unit} (ratio {gv / dv:.3f}, added {gv - dv:+.1f} {unit})")
    print("  (TTFT is not the gateway's cost here: its chat pools route conversation-affine, so a request finds its"
          " character card cached more often than the direct bench's slot-aware routing lets it; test_gateway.py"
          " measures what the gateway adds before the first token)")
    shares = short_gap_share(direct), short_gap_share(gateway)
    print(f"  gaps under 2 ms: direct {shares[0]:.1%}, through the gateway {shares[1]:.1%}")
    assert d["errors"] == 0 and g["errors"] == 0, (direct["errors"], gateway["errors"])
    assert not gateway["warnings"], gateway["warnings"]
    assert not (shares[1] > 0.25 and shares[0] <= 0.25), "the stream through the gateway arrived in bursts"
