"""The routing server with real processes: two fake OpenAI-compatible backends (plus a failing one) and
`bandit-sim serve`, all on 127.0.0.1 at free ports, always terminated.

Acceptance checks (issue #14): the README flow (completion, feedback, /metrics), the official `openai` client
(plain and streamed) with the chosen model in the headers, OpenAI-style errors, security (401 without the admin
token or a client key, changing nothing; no secret in any file, log or response), a failing upstream retried on
the next-best model, and SIGKILL mid-run -> restart with every acknowledged feedback applied exactly once.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bandit_sim.cli import main
from bandit_sim.serve.config import ConfigError, load_config
from bandit_sim.serve.service import RouterService
from bandit_sim.serve.wal import DecisionLog, DecisionLogError, read_log
from serve_helpers import base_env, start_backend, start_server, write_config

UPSTREAM_KEY = "sk-upstream-SECRET-7f3a9c"
ADMIN_TOKEN = "admin-SECRET-41b2"
CLIENT_KEY = "client-SECRET-9d0e"
SECRETS = (UPSTREAM_KEY, ADMIN_TOKEN, CLIENT_KEY)


def _backend(name, url, **kw):
    d = dict(name=name, base_url=url, api_key_env="TEST_UPSTREAM_KEY", family="Local", input_per_m=0.2,
             output_per_m=0.4, tokens_mean=20, tokens_sd=10)
    d.update(kw)
    return d


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    """Two healthy backends that demand the upstream key, and one that always fails (HTTP 500)."""
    tmp = tmp_path_factory.mktemp("fakes")
    env = base_env(TEST_UPSTREAM_KEY=UPSTREAM_KEY)
    procs = []
    try:
        specs = (("small", ()), ("large", ()), ("broken", ("--fail",)))
        with ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(start_backend, name, tmp, env, "--require-key-env", "TEST_UPSTREAM_KEY", *extra)
                    for name, extra in specs]
            started = [f.result() for f in futs]  # raises after all have been collected below
        procs.extend(p for p, _ in started)
        yield {name: url for (name, _), (_, url) in zip(specs, started)}
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def server(fakes, tmp_path_factory):
    """One server with client keys and an admin token configured; yields (base_url, tmp dir, proc)."""
    tmp = tmp_path_factory.mktemp("server")
    cfg = write_config(tmp / "router.toml",
                       [_backend("small", fakes["small"]),
                        _backend("large", fakes["large"], input_per_m=3.0, output_per_m=15.0, tokens_mean=40)],
                       server=dict(state="state/router.npz", decision_log="state/decisions.jsonl", save_every=5,
                                   max_body_bytes=20000, client_keys_env="TEST_CLIENT_KEYS",
                                   admin_token_env="TEST_ADMIN_TOKEN", upstream_timeout_s=5),
                       presets="[presets.cheap]\nlam = 5.0\n")
    env = base_env(TEST_UPSTREAM_KEY=UPSTREAM_KEY, TEST_ADMIN_TOKEN=ADMIN_TOKEN,
                   TEST_CLIENT_KEYS=f"other-key,{CLIENT_KEY}")
    proc, base = start_server(cfg, tmp, env)
    try:
        yield base, tmp, proc
    finally:
        proc.stop()


AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MSG = {"model": "router", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is the capital of France?"}]}
RESPONSES: list[str] = []  # every response body and header block the tests saw (scanned for secrets)


def _seen(r: httpx.Response) -> httpx.Response:
    RESPONSES.append(r.text + json.dumps(dict(r.headers)))
    return r


def _err(r: httpx.Response, status: int, *words: str) -> dict:
    _seen(r)
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}
    for w in words:
        assert w in e["message"], e["message"]
    return e


# ---------------------------------------------------------------- the README flow, the openai client


def test_completion_feedback_metrics_flow(server):
    base, tmp, _ = server
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as c:
        r = _seen(c.post("/v1/chat/completions", json=MSG))
        assert r.status_code == 200, r.text
        h = r.headers
        assert h["x-router-model"] in ("small", "large") and h["x-router-decision-id"].startswith("d")
        assert float(h["x-router-forecast-tokens"]) > 0 and float(h["x-router-forecast-cost-usd"]) > 0
        lo, hi = map(float, h["x-router-forecast-tokens-interval"].split(","))
        assert lo <= float(h["x-router-forecast-tokens"]) <= hi and h["x-router-explored"] in ("true", "false")
        body = r.json()  # the backend's response, unchanged: its own model name and usage
        assert body["model"] == h["x-router-model"] and body["usage"]["completion_tokens"] > 0
        assert body["choices"][0]["message"]["content"].startswith(h["x-router-model"] + " says:")
        fb = _seen(c.post("/v1/feedback", json={"decision_id": h["x-router-decision-id"], "quality": 0.8})).json()
        assert fb["applied"] and fb["output_tokens"] == body["usage"]["completion_tokens"] and fb["cost_usd"] > 0
        # a backend by name passes through unrouted; a preset routes
        r = _seen(c.post("/v1/chat/completions", json=dict(MSG, model="small")))
        assert r.status_code == 200 and r.headers["x-router-routed"] == "false" and "x-router-decision-id" not in r.headers
        r = _seen(c.post("/v1/chat/completions", json=dict(MSG, model="router:cheap")))
        assert r.status_code == 200 and r.headers["x-router-routed"] == "true"
        ids = [m["id"] for m in _seen(c.get("/v1/models")).json()["data"]]
        assert ids == ["router", "router:cheap", "small", "large"]
        metrics = _seen(c.get("/metrics")).text
    for name in ("router_decisions_total", "router_spend_usd_total", "router_lambda", "router_feedback_total",
                 "router_request_latency_seconds_bucket", "router_overhead_seconds_bucket",
                 "router_passthrough_requests_total"):
        assert name in metrics, name
    log = [json.loads(x) for x in (tmp / "state" / "decisions.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in log]
    assert kinds.count("decision") >= 2 and "feedback" in kinds and "usage" in kinds
    assert all("prompt" not in e for e in log)  # log_prompts is off
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))


def test_openai_client_plain_and_streaming(server):
    openai = pytest.importorskip("openai")
    base, _, _ = server
    client = openai.OpenAI(base_url=base + "/v1", api_key=CLIENT_KEY, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": "Say hello"}])
    RESPONSES.append(json.dumps(dict(raw.headers)))
    completion = raw.parse()
    assert raw.headers["x-router-model"] in ("small", "large")
    assert completion.model == raw.headers["x-router-model"]
    assert completion.choices[0].message.content.endswith("Say hello")
    with client.chat.completions.with_streaming_response.create(
            model="router", messages=[{"role": "user", "content": "Stream a hello"}], stream=True,
            stream_options={"include_usage": True}) as resp:
        model = resp.headers["x-router-model"]
        did = resp.headers["x-router-decision-id"]
        chunks = list(resp.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == f"{model} says: Stream a hello"
    assert chunks[-1].usage.completion_tokens == len(text.split(" "))
    # tokens and cost of the streamed call come from its usage chunk
    fb = httpx.post(base + "/v1/feedback", headers=AUTH, json={"decision_id": did, "quality": 1.0}).json()
    assert fb["output_tokens"] == chunks[-1].usage.completion_tokens
    # models list through the client
    assert "router" in [m.id for m in client.models.list()]


# ---------------------------------------------------------------- errors


def test_errors_are_openai_style(server):
    base, _, _ = server
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as c:
        _err(c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
             400, "not valid JSON")
        _err(c.post("/v1/chat/completions", json={"model": "router"}), 400, "messages")
        _err(c.post("/v1/chat/completions", json=dict(MSG, model="gpt-17")), 404, "unknown model", "router")
        _err(c.post("/v1/chat/completions", json=dict(MSG, model="router:nope")), 400, "unknown preset")
        _err(c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": " "}]}),
             400, "no user message")
        _err(c.post("/v1/chat/completions", json=dict(MSG, pad="x" * 30000)), 413, "limit of 20000 bytes")
        _err(c.post("/v1/feedback", json={"decision_id": "d999999", "quality": 1}), 404, "unknown decision_id")
        r = _seen(c.post("/v1/chat/completions", json=MSG))
        did = r.headers["x-router-decision-id"]
        _err(c.post("/v1/feedback", json={"decision_id": did, "quality": 1.5}), 400, "[0, 1]")
        _err(c.post("/v1/feedback", json={"decision_id": did, "quality": "good"}), 400, "number")
        _err(c.post("/v1/feedback", json={"decision_id": did}), 400, "quality")
        assert _seen(c.post("/v1/feedback", json={"decision_id": did, "quality": 0.0})).status_code == 200
        _err(c.post("/v1/feedback", json={"decision_id": did, "quality": 0.0}), 409, "applied once")
        _err(c.get("/v1/nothing"), 404, "no route")


def test_malformed_config_gets_a_clear_message(tmp_path, capsys):
    good = dict(name="a", base_url="http://127.0.0.1:1/v1", input_per_m=1, output_per_m=1)
    cases = [
        ([dict(good, api_key="sk-123")], "looks like a secret"),
        ([dict(good, base_url="ftp://x")], "base_url"),
        ([dict(good, input_per_m=-1)], "input_per_m"),
        ([dict(good, colour="red")], "unknown keys ['colour']"),
        ([good, good], "duplicate backend names"),
        ([], "no [[backends]]"),
    ]
    for backends, words in cases:
        path = write_config(tmp_path / "bad.toml", backends)
        with pytest.raises(ConfigError, match=None) as ei:
            load_config(path)
        assert words in str(ei.value), (words, str(ei.value))
    (tmp_path / "broken.toml").write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml")
    assert main(["serve", "--config", str(tmp_path / "broken.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_config_refuses_a_timeout_that_is_not_positive_and_names_the_backend_of_a_bad_price(tmp_path, capsys):
    small = dict(name="small", base_url="http://127.0.0.1:1/v1", input_per_m=1, output_per_m=1)
    large = dict(small, name="large")
    # httpx.Timeout(0) times every upstream call out at once: the timeout must be > 0 (and finite)
    for t in (0, 0.0, -5, "inf"):
        path = write_config(tmp_path / "t.toml", [small], server={"upstream_timeout_s": t})
        if t == "inf":  # a TOML float, not a string
            path.write_text(path.read_text().replace('"inf"', "inf"))
        with pytest.raises(ConfigError) as ei:
            load_config(path)
        assert f"{path} [server]" in str(ei.value) and "'upstream_timeout_s'" in str(ei.value), str(ei.value)
        if t != "inf":
            assert "must be > 0 seconds" in str(ei.value), str(ei.value)
    path = write_config(tmp_path / "t.toml", [small], server={"upstream_timeout_s": 0})
    assert main(["serve", "--config", str(path)]) == 2
    assert "'upstream_timeout_s' must be > 0 seconds" in capsys.readouterr().err
    assert load_config(write_config(tmp_path / "t.toml", [small], server={"upstream_timeout_s": 0.5})
                       ).upstream_timeout_s == 0.5
    # a bad price of the second backend is reported as that backend (number and name), not "entry 0"
    path = write_config(tmp_path / "p.toml", [small, dict(large, output_per_m=-2)])
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path} [[backends]] #2 ('large'): 'output_per_m' must be >= 0"), msg
    assert "entry" not in msg, msg


# ---------------------------------------------------------------- security, failures


def test_security_tokens_and_no_secret_anywhere(server, fakes):
    base, tmp, proc = server
    state = tmp / "state" / "router.npz"
    with httpx.Client(base_url=base, timeout=30) as c:
        before = (_seen(c.get("/admin/stats", headers=ADMIN)).json(), state.read_bytes(),
                  (tmp / "state" / "decisions.jsonl").read_bytes())
        add = {"action": "add", "backend": _backend("broken", fakes["broken"])}
        for hdr in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {CLIENT_KEY}"}):
            _err(c.post("/admin/models", json=add, headers=hdr), 401, "admin token")
            _err(c.post("/admin/models", json={"action": "remove", "name": "small"}, headers=hdr), 401)
            _err(c.get("/admin/stats", headers=hdr), 401)
        after = (_seen(c.get("/admin/stats", headers=ADMIN)).json(), state.read_bytes(),
                 (tmp / "state" / "decisions.jsonl").read_bytes())
        assert after == before  # nothing changed: models, counts, state file, log
        # client keys are checked when configured
        _err(c.post("/v1/chat/completions", json=MSG), 401, "API key")
        _err(c.post("/v1/chat/completions", json=MSG, headers={"authorization": "Bearer nope"}), 401)
        _err(c.post("/v1/feedback", json={"decision_id": "d0", "quality": 1}), 401)
        # the admin adds a failing backend (family prior); calls routed to it are retried on the next-best
        r = _seen(c.post("/admin/models", json=add, headers=ADMIN))
        assert r.status_code == 200 and r.json()["added"]["name"] == "broken"
        assert "broken" in _seen(c.get("/health")).json()["models"]
        fell_back = 0
        for i in range(24):
            r = _seen(c.post("/v1/chat/completions", json=dict(MSG, model="router:cheap" if i % 2 else "router"),
                             headers=AUTH))
            assert r.status_code == 200, r.text
            assert r.headers["x-router-model"] != "broken"
            if "x-router-fallback-from" in r.headers:
                assert r.headers["x-router-fallback-from"] == "broken"
                assert "broken: HTTP 500" in r.headers["x-router-upstream-error"]
                fell_back += 1
                # the feedback goes to the model that answered
                fb = _seen(c.post("/v1/feedback", json={"decision_id": r.headers["x-router-decision-id"],
                                                        "quality": 1}, headers=AUTH)).json()
                assert fb["model"] == r.headers["x-router-model"]
        assert fell_back > 0
        assert 'router_upstream_errors_total{model="broken"}' in c.get("/metrics").text
        # passthrough to a failing backend: OpenAI-style 502, reported
        _err(c.post("/v1/chat/completions", json=dict(MSG, model="broken"), headers=AUTH), 502, "broken: HTTP 500")
        r = _seen(c.post("/admin/models", json={"action": "remove", "name": "broken"}, headers=ADMIN))
        assert r.status_code == 200 and "broken" not in r.json()["models"]
    # no secret in any file the server wrote, its output, or any response
    files = [p for p in tmp.rglob("*") if p.is_file() and p.suffix != ".toml"]
    assert any(p.suffix == ".npz" for p in files) and any(p.suffix == ".jsonl" for p in files)
    texts = [p.read_bytes().decode("latin-1") for p in files] + [proc.output()] + RESPONSES
    for s in SECRETS:
        assert not any(s in t for t in texts), f"secret {s[:8]}... leaked"
    cfg_text = (tmp / "router.toml").read_text()
    assert not any(s in cfg_text for s in SECRETS)


# ---------------------------------------------------------------- SIGKILL mid-run, restart, nothing lost


def test_sigkill_restart_keeps_every_acknowledged_feedback(fakes, tmp_path):
    n_requests, workers = 500, 8
    seed = int(os.environ.get("SERVE_KILL_SEED", time.time_ns() % 10_000))
    kill_after = random.Random(seed).randint(60, 440)  # acknowledged feedbacks before the kill
    cfg = write_config(tmp_path / "router.toml", [_backend("small", fakes["small"]),
                                                 _backend("large", fakes["large"], output_per_m=2.0)],
                       server=dict(state="st/router.npz", decision_log="st/decisions.jsonl", save_every=37))
    env = base_env(TEST_UPSTREAM_KEY=UPSTREAM_KEY)
    proc, base = start_server(cfg, tmp_path, env, "first")
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=base, timeout=30)
            clients.append(local.c)
        return local.c

    clients: list[httpx.Client] = []
    acked: list[str] = []  # decision ids whose feedback got a 200
    routed_only: list[str] = []  # routed (response received), feedback never sent
    lock, gate = threading.Lock(), threading.Condition()
    state = {"stop": False, "inflight": 0}
    try:
        def one(i: int) -> None:
            if state["stop"]:
                return
            try:
                r = client().post("/v1/chat/completions", json={"model": "router", "messages": [
                    {"role": "user", "content": f"question {i}"}]})
            except httpx.HTTPError:
                return  # killed mid-request
            did = r.headers["x-router-decision-id"]
            with gate:
                if state["stop"]:
                    with lock:
                        routed_only.append(did)
                    return
                state["inflight"] += 1
            try:
                f = client().post("/v1/feedback", json={"decision_id": did, "quality": (i % 5) / 4})
                assert f.status_code == 200, f.text
                with lock:
                    acked.append(did)
            finally:
                with gate:
                    state["inflight"] -= 1
                    gate.notify_all()

        def killer() -> None:
            while True:
                with lock:
                    if len(acked) >= kill_after:
                        break
                time.sleep(0.002)
            with gate:  # no feedback in flight: each one was acknowledged or never sent
                state["stop"] = True
                gate.wait_for(lambda: state["inflight"] == 0, timeout=30)
                proc.kill()  # SIGKILL, completions still in flight

        k = threading.Thread(target=killer)
        k.start()
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, range(n_requests)))
        k.join(60)
        assert proc.p.returncode == -9, "the server was not killed"
    finally:
        proc.stop()
        for c in clients:
            c.close()

    proc2, base2 = start_server(cfg, tmp_path, env, "second", cli=True)  # the `bandit-sim serve` command
    try:
        h = httpx.get(base2 + "/health").json()
        assert h["observed"] == len(acked), (seed, kill_after, h, len(acked))
        # (replayed_events may be 0: the state can have been saved right after the last acknowledged event)
        assert h["replayed_events"] >= 0
        # none twice: an acknowledged feedback is refused after the restart
        r = httpx.post(base2 + "/v1/feedback", json={"decision_id": acked[-1], "quality": 1.0})
        assert r.status_code == 409, r.text
        # decisions routed before the kill (even after the last save) still take their feedback
        for did in routed_only[:20]:
            r = httpx.post(base2 + "/v1/feedback", json={"decision_id": did, "quality": 1.0})
            assert r.status_code == 200, (did, r.text)
        expect = len(acked) + len(routed_only[:20])
        assert httpx.get(base2 + "/health").json()["observed"] == expect
        r = httpx.post(base2 + "/v1/chat/completions", json={"model": "router", "messages": [
            {"role": "user", "content": "after restart"}]})
        assert r.status_code == 200 and int(r.headers["x-router-decision-id"][1:]) >= len(acked)
    finally:
        proc2.stop()
    # after a clean stop the state reflects everything; the log has one feedback line per applied feedback
    log = [json.loads(x) for x in (tmp_path / "st" / "decisions.jsonl").read_text().splitlines()]
    fb = [e["id"] for e in log if e["type"] == "feedback"]
    assert len(fb) == len(set(fb)) == expect
    assert set(acked) <= set(fb)


# ---------------------------------------------------------------- the service in-process (no HTTP)


def test_service_replay_and_admin_changes_survive_a_restart(tmp_path):
    cfg_path = write_config(tmp_path / "r.toml", [_backend("a", "http://127.0.0.1:9/v1"),
                                                  _backend("b", "http://127.0.0.1:9/v1", output_per_m=5.0)],
                            server=dict(state="s.npz", decision_log="log.jsonl", save_every=1000))
    cfg = load_config(cfg_path)
    s = RouterService(cfg)
    ds = [s.route(f"q {i}", 5) for i in range(6)]
    s.record_usage(ds[0].decision_id, 5, 7)
    s.feedback(ds[0].decision_id, 1.0)
    s.feedback(ds[1].decision_id, 0.0, output_tokens=3)
    s.add_backend(_backend("c", "http://127.0.0.1:9/v1", family="Local"))
    s.remove_backend("b")
    d7 = s.route("after admin", 5)
    s.feedback(d7.decision_id, 0.5, output_tokens=2)
    s.log.close()  # "killed": the admin change saved the state; the last decision and feedback are only logged
    s2 = RouterService(cfg)
    assert s2.replayed == 2 and s2.router.models == s.router.models and "b" not in s2.router.models
    assert s2.router.summary() == s.router.summary()
    for d in ds[2:]:
        if d.model != "b":  # decisions of a removed backend take no feedback
            assert s2.feedback(d.decision_id, 1.0, output_tokens=1)["applied"]
    with pytest.raises(Exception, match="applied once"):
        s2.feedback(ds[0].decision_id, 1.0, output_tokens=1)
    s2.close()
    assert RouterService(cfg).router.summary() == s2.router.summary()


def test_spend_target_moves_lambda(tmp_path):
    cfg_path = write_config(tmp_path / "r.toml", [_backend("a", "http://127.0.0.1:9/v1"),
                                                  _backend("b", "http://127.0.0.1:9/v1")],
                            server=dict(state="s.npz", decision_log="log.jsonl"),
                            policy="spend_target_usd = 1e-6\nspend_rate = 0.5\nlam = 0.3")
    s = RouterService(load_config(cfg_path))
    lam0 = s.lam
    for i in range(5):
        s.feedback(s.route(f"q {i}", 5).decision_id, 1.0, output_tokens=10, cost_usd=1e-4)  # 100x the target
    assert s.lam > lam0 * 1.5
    s.close()
    assert RouterService(load_config(cfg_path)).lam == pytest.approx(s.lam)  # saved with the state


def test_restart_with_a_backend_without_api_key_env(tmp_path):
    # api_key_env is optional; the state file and the log's admin "add" record it as null, which a restart must read
    a = _backend("a", "http://127.0.0.1:9/v1")
    del a["api_key_env"]
    cfg = load_config(write_config(tmp_path / "r.toml", [a, _backend("b", "http://127.0.0.1:9/v1")],
                                   server=dict(state="s.npz", decision_log="log.jsonl", save_every=1000)))
    s = RouterService(cfg)
    added = s.add_backend(dict(name="c", base_url="http://127.0.0.1:9/v1", input_per_m=0.1, output_per_m=0.2))
    assert added["added"]["api_key_env"] is None
    s.close()
    s2 = RouterService(cfg)  # state file: a and c without a key variable
    assert s2.backends["a"].api_key_env is None and s2.backends["c"].api_key_env is None
    s2.close()
    (tmp_path / "s.npz").unlink()  # from the log alone: the admin "add" event is replayed
    s3 = RouterService(cfg)
    assert "c" in s3.router.models and s3.backends["c"].api_key_env is None
    s3.close()


def test_state_path_without_npz_is_restored_on_restart(tmp_path):
    cfg_path = write_config(tmp_path / "r.toml", [_backend("a", "http://127.0.0.1:9/v1"),
                                                  _backend("b", "http://127.0.0.1:9/v1")],
                            server=dict(state="router_state", decision_log="log.jsonl", save_every=1000))
    cfg = load_config(cfg_path)
    assert cfg.state == tmp_path / "router_state.npz"
    s = RouterService(cfg)
    s.feedback(s.route("q", 5).decision_id, 1.0, output_tokens=3)
    s.close()
    (tmp_path / "log.jsonl").unlink()  # only the state file can bring the feedback back
    s2 = RouterService(load_config(cfg_path))
    assert s2.router.summary()["observed"] == 1 and s2.router.step == 1
    s2.close()


def test_decision_log_skips_only_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    log = DecisionLog(path)
    for i in range(4):
        log.append(dict(type="feedback", id=f"d{i}"), sync=True)
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines) + b'{"seq":5,"ty')  # torn last line: skipped and cut
    assert [e["seq"] for e in read_log(path)] == [1, 2, 3, 4]
    log = DecisionLog(path)
    assert log.append(dict(type="feedback", id="d4")) == 5
    log.close()
    assert [e["seq"] for e in read_log(path)] == [1, 2, 3, 4, 5]
    # a damaged line in the middle: an error naming the file and the line, not a silent end of the log
    lines = path.read_bytes().splitlines(keepends=True)
    for bad in (b'{"seq":2,"type":"feedb\n', b"[1, 2]\n", b"\xff\xfe\n"):
        path.write_bytes(b"".join(lines[:1] + [bad] + lines[2:]))
        with pytest.raises(DecisionLogError, match=rf"{path.name}: line 2 is damaged"):
            list(read_log(path))
        with pytest.raises(DecisionLogError, match="line 2"):
            DecisionLog(path)  # the server does not start (and reuses no seq)
    assert path.read_bytes().endswith(lines[-1])  # nothing cut


def test_service_with_a_damaged_log_line_does_not_start_and_names_it(tmp_path):
    cfg_path = write_config(tmp_path / "r.toml", [_backend("a", "http://127.0.0.1:9/v1")],
                            server=dict(state="s.npz", decision_log="log.jsonl"))
    (tmp_path / "log.jsonl").write_text('{"seq":1,"type":"failed","id":"d0"}\nnot json\n'
                                        '{"seq":3,"type":"failed","id":"d1"}\n')
    with pytest.raises(DecisionLogError, match="log.jsonl: line 2"):
        RouterService(load_config(cfg_path))


def test_policy_changes_on_restart_are_applied_or_named(tmp_path, caplog):
    backends = [_backend("a", "http://127.0.0.1:9/v1"), _backend("b", "http://127.0.0.1:9/v1")]
    server = dict(state="s.npz", decision_log="log.jsonl")
    path = write_config(tmp_path / "r.toml", backends, server=server, policy="lam = 0.3\ngam = 0.25")
    s = RouterService(load_config(path))
    s.close()
    write_config(path, backends, server=server,
                 policy='lam = 0.6\ngam = 0.1\ncost_scale = 0.5\nname = "epsilon_greedy"')
    with caplog.at_level("WARNING", logger="bandit_sim.serve"):
        s2 = RouterService(load_config(path))
    text = caplog.text
    for words in ("lam = 0.6 differs from the restored state's 0.3: using the config's 0.6",
                  "gam = 0.1 differs", "cost_scale = 0.5 differs",
                  "name = 'epsilon_greedy' differs from the restored state's 'thompson': using the state's"):
        assert words in text, (words, text)
    assert s2.lam == pytest.approx(0.6) and float(s2.router.hyper.gam) == pytest.approx(0.1)
    assert s2.router.cost_scale == 0.5 and s2.router.policy == "thompson"
    s2.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="bandit_sim.serve"):
        RouterService(load_config(path)).close()  # saved with the new values: nothing to say now ...
    assert "lam" not in caplog.text and "name = 'epsilon_greedy'" in caplog.text  # ... but the fixed policy name
