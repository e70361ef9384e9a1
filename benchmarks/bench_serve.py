"""Overhead of the routing server: server latency minus backend latency, at 1 and 32 concurrent clients.

    python benchmarks/bench_serve.py --out results/bench/serve.json

Starts two fake OpenAI-compatible backends (`scripts/fake_backend.py`, --delay-ms of simulated model latency)
and the server (`python -m bandit_sim.serve`) on 127.0.0.1, then for each concurrency C sends N chat
completions (`model: "router"`, non-streamed) from C concurrent asyncio clients, and the same load straight to a
backend. Reported per C:

- ``overhead_pct_ms``: p50 / p99 of (latency through the server) minus p50 / p99 of (latency straight to the
  backend): the issue's "server latency minus backend latency";
- ``overhead_per_request_ms``: p50 / p99 over requests of (client latency through the server) minus the upstream
  time the server measured for that request (header ``x-router-upstream-ms``): the server's own time per
  request, including waiting for the event loop when C > 1;
- ``passthrough_*``: the same load naming a backend (``model: "small"``): the proxy alone (FastAPI, httpx,
  JSON) without routing, logging or token counting;
- ``requests_per_s`` through the server; ``in_process_ms``: where the time goes inside one routed call (route,
  token count, log append, feedback, state save), timed in-process.

The load generator, the backends and the server share the machine's cores (2 on the reference box), so the
figures at C = 32 include CPU contention among them. Not a timed test: run it by hand or with `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bandit_sim.serve.config import load_config
from bandit_sim.serve.service import RouterService
from hierarchical.storage import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc, timeout=120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


async def _load(url: str, n: int, conc: int, model: str) -> tuple[np.ndarray, np.ndarray, float]:
    lat, up = [], []
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        q = iter(range(n))

        async def worker():
            for i in q:
                t0 = time.perf_counter()
                r = await c.post(url, json={"model": model, "messages": [{"role": "user", "content": f"q {i}"}]})
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(r.text)
                up.append(float(r.headers.get("x-router-upstream-ms", "nan")) / 1e3)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall = time.perf_counter() - t0
    return np.array(lat), np.array(up), wall


def _pct(a) -> dict:
    a = np.asarray(a) * 1e3
    return dict(p50=float(np.percentile(a, 50)), p99=float(np.percentile(a, 99)), mean=float(a.mean()))


def _in_process(cfg_path: Path, n: int = 300) -> dict:
    cfg = load_config(cfg_path)
    with tempfile.TemporaryDirectory() as d:
        cfg = dataclasses.replace(cfg, state=Path(d) / "s.npz", decision_log=Path(d) / "l.jsonl")
        s = RouterService(cfg)
        for i in range(20):
            s.route(f"warm {i}", 5)

        def tm(f, k=n):
            t0 = time.perf_counter()
            for i in range(k):
                f(i)
            return (time.perf_counter() - t0) / k * 1e3

        out = dict(route_and_log=tm(lambda i: s.route(f"q {i}", 5)),
                   router_route=tm(lambda i: s.router.route(f"q {i}")),
                   count_tokens=tm(lambda i: s.count_input_tokens([f"q {i}"])),
                   log_append_flush=tm(lambda i: s.log.append({"type": "bench"})),
                   log_append_fsync=tm(lambda i: s.log.append({"type": "bench"}, sync=True)),
                   state_save=tm(lambda i: s.save(), 20))
        ids = list(s.router.pending)[:n]
        out["feedback_with_fsync"] = tm(lambda i: s.feedback(ids[i], 1.0, 5), len(ids))
        s.log.close()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/bench/serve.json")
    p.add_argument("--requests", type=int, default=600, help="requests per concurrency level (default 600)")
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--delay-ms", type=float, default=20.0, help="simulated backend latency (default 20 ms)")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            ports = [_port(), _port()]
            for name, port in zip(("small", "large"), ports):
                procs.append(subprocess.Popen([sys.executable, str(ROOT / "scripts" / "fake_backend.py"), "--port",
                                               str(port), "--name", name, "--delay-ms", str(args.delay_ms)],
                                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                _wait(f"http://127.0.0.1:{port}/v1/models", procs[-1])
            sport = _port()
            cfg = tmp / "router.toml"
            cfg.write_text(f"""[server]
state = "state.npz"
decision_log = "decisions.jsonl"
[[backends]]
name = "small"
base_url = "http://127.0.0.1:{ports[0]}/v1"
input_per_m = 0.2
output_per_m = 0.2
[[backends]]
name = "large"
base_url = "http://127.0.0.1:{ports[1]}/v1"
input_per_m = 3.0
output_per_m = 15.0
""")
            procs.append(subprocess.Popen([sys.executable, "-m", "bandit_sim.serve", "--config", str(cfg), "--port",
                                           str(sport), "--log-level", "warning"], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait(f"http://127.0.0.1:{sport}/health", procs[-1])
            server = f"http://127.0.0.1:{sport}/v1/chat/completions"
            direct = f"http://127.0.0.1:{ports[0]}/v1/chat/completions"
            asyncio.run(_load(server, 50, 4, "router"))  # warm-up (connections, first requests)
            asyncio.run(_load(direct, 50, 4, "small"))
            levels_out = {}
            for c in levels:
                lat_d, _, wall_d = asyncio.run(_load(direct, args.requests, c, "small"))
                lat_s, up_s, wall_s = asyncio.run(_load(server, args.requests, c, "router"))
                lat_p, _, wall_p = asyncio.run(_load(server, args.requests, c, "small"))  # proxy only, no routing
                ps, pd_, pp = _pct(lat_s), _pct(lat_d), _pct(lat_p)
                levels_out[str(c)] = dict(
                    server_latency_ms=ps, backend_latency_ms=pd_,
                    overhead_pct_ms=dict(p50=ps["p50"] - pd_["p50"], p99=ps["p99"] - pd_["p99"]),
                    overhead_per_request_ms=_pct(lat_s - up_s),
                    requests_per_s=args.requests / wall_s, backend_requests_per_s=args.requests / wall_d,
                    passthrough_latency_ms=pp,
                    passthrough_overhead_pct_ms=dict(p50=pp["p50"] - pd_["p50"], p99=pp["p99"] - pd_["p99"]),
                    passthrough_requests_per_s=args.requests / wall_p)
                print(f"C={c}: overhead p50 {levels_out[str(c)]['overhead_pct_ms']['p50']:.2f} ms, "
                      f"p99 {levels_out[str(c)]['overhead_pct_ms']['p99']:.2f} ms; per request p50 "
                      f"{levels_out[str(c)]['overhead_per_request_ms']['p50']:.2f} / p99 "
                      f"{levels_out[str(c)]['overhead_per_request_ms']['p99']:.2f} ms; "
                      f"{levels_out[str(c)]['requests_per_s']:.0f} req/s; passthrough overhead p50 "
                      f"{levels_out[str(c)]['passthrough_overhead_pct_ms']['p50']:.2f} ms, "
                      f"{levels_out[str(c)]['passthrough_requests_per_s']:.0f} req/s", flush=True)
        finally:
            for pr in procs:
                if pr.poll() is None:
                    pr.send_signal(signal.SIGTERM)
            for pr in procs:
                try:
                    pr.wait(15)
                except subprocess.TimeoutExpired:
                    pr.kill()
        inproc = _in_process(cfg)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    res = dict(command="python benchmarks/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               requests=args.requests, backend_delay_ms=args.delay_ms, levels=levels_out, in_process_ms=inproc,
               machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
                            load_average_at_end=load),
               note="backends, server and load generator share the machine's cores; see the module docstring")
    atomic_write(args.out, json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}; in-process ms: " + ", ".join(f"{k} {v:.3f}" for k, v in inproc.items()))
    return res


if __name__ == "__main__":
    main()
