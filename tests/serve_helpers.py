"""Real processes for the server tests: fake OpenAI-compatible backends and `bandit-sim serve`, on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "scripts" / "fake_backend.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Proc:
    """A subprocess with its output in a file; `stop` always ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, args, env, out: Path):
        self.out = out
        self._f = open(out, "wb")
        self.p = subprocess.Popen(args, env=env, stdout=self._f, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._f.close()

    def output(self) -> str:
        self._f.flush()
        return self.out.read_text(errors="replace")


def start_backend(name: str, tmp: Path, env: dict, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    p = Proc([sys.executable, str(FAKE), "--port", str(port), "--name", name, *extra], env, tmp / f"{name}.out")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base + "/v1/models", p.p, 30)
    except Exception:
        p.stop()
        raise
    return p, base + "/v1"


def write_config(path: Path, backends: list[dict], *, server: dict | None = None, policy: str = "",
                 presets: str = "") -> Path:
    lines = ["[server]"]
    for k, v in (server or {}).items():
        lines.append(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
    lines += ["", "[policy]", policy, presets]
    for b in backends:
        lines.append("[[backends]]")
        for k, v in b.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(config: Path, tmp: Path, env: dict, tag: str = "server", cli: bool = False) -> tuple[Proc, str]:
    """`python -m bandit_sim.serve` (skips loading the experiments), or the `bandit-sim serve` command."""
    port = free_port()
    exe = Path(sys.executable).with_name("bandit-sim")
    if cli:
        args = ([str(exe)] if exe.exists() else [sys.executable, "-m", "bandit_sim.cli"]) + ["serve"]
    else:
        args = [sys.executable, "-m", "bandit_sim.serve"]
    p = Proc(args + ["--config", str(config), "--port", str(port)], env, tmp / f"{tag}.out")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_up(base + "/health", p.p)
    except Exception:
        out = p.output()
        p.stop()
        raise RuntimeError(out[-3000:])
    return p, base


JAX_CACHE = Path(tempfile.gettempdir()) / f"bandit-sim-serve-tests-jax-cache-{os.getuid()}"


def base_env(**extra) -> dict:
    """The test servers' environment: CPU JAX with a persistent compilation cache shared by the test servers
    (a restart loads the compiled route/observe steps instead of compiling them again)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANDIT_ROUTER")}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(JAX_CACHE),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
    return env
