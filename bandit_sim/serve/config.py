"""The server's config file (TOML): backends with their prices, the policy and its knobs, paths, limits.

Secrets never live in this file: upstream API keys, the admin token and client API keys are read from the
environment variables the file names (``api_key_env``, ``admin_token_env``, ``client_keys_env``). A key that
looks like a secret (``api_key``, ``token``, ``password``, ...) is refused with a message saying so. Relative
paths are resolved against the config file's folder. Unknown keys are refused (typos do not pass silently).
See docs/serve.md for the full format.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bandit_sim.data.catalog import family_of
from bandit_sim.data.prices import PricesFileError, price_fields
from hierarchical.storage import npz_path

__all__ = ["Backend", "ConfigError", "PolicyConfig", "ServeConfig", "load_config", "parse_backend",
           "DEFAULT_TOKENS_MEAN", "DEFAULT_TOKENS_SD"]

DEFAULT_TOKENS_MEAN = 300.0  # forecast output tokens of a backend the config gives no figure for
DEFAULT_TOKENS_SD = 200.0
TYPICAL_INPUT_TOKENS = 500  # prices the default cost_scale: the largest backend's cost of a typical call
_SECRET = re.compile(r"(^|_)(api_?key|key|keys|token|tokens|password|secret|bearer|authorization)$")
_BACKEND_KEYS = {"name", "base_url", "api_key_env", "family", "input_per_m", "output_per_m", "model", "tokens_mean",
                 "tokens_sd", "source"}
_SERVER_KEYS = {"host", "port", "state", "decision_log", "save_every", "log_prompts", "max_body_bytes",
                "upstream_timeout_s", "admin_token_env", "client_keys_env", "access_log", "fsync_every_line"}
_POLICY_KEYS = {"name", "lam", "gam", "seed", "cost_scale", "spend_target_usd", "spend_rate", "family_strength",
                "capacity"}


class ConfigError(ValueError):
    """A malformed config file or backend entry (the message names the file, the section and the key)."""


@dataclass(frozen=True)
class Backend:
    """One upstream LLM endpoint (OpenAI-compatible)."""

    name: str  # the name the router routes to and clients may name directly
    base_url: str  # e.g. https://api.openai.com/v1 (POST {base_url}/chat/completions)
    api_key_env: str | None  # environment variable holding its API key (never the key itself)
    family: str
    input_per_m: float  # USD per 1M input tokens
    output_per_m: float  # USD per 1M output tokens
    model: str  # the model name sent upstream (default: name)
    tokens_mean: float = DEFAULT_TOKENS_MEAN
    tokens_sd: float = DEFAULT_TOKENS_SD

    @property
    def prices(self) -> tuple[float, float]:
        """USD per input token, USD per output token."""
        return self.input_per_m / 1e6, self.output_per_m / 1e6

    def public(self) -> dict[str, Any]:
        """What may be shown or saved: everything but secrets (the key's environment variable name only)."""
        return dict(name=self.name, base_url=self.base_url, api_key_env=self.api_key_env, family=self.family,
                    input_per_m=self.input_per_m, output_per_m=self.output_per_m, model=self.model,
                    tokens_mean=self.tokens_mean, tokens_sd=self.tokens_sd)


@dataclass(frozen=True)
class PolicyConfig:
    name: str = "thompson"
    lam: float = 0.3
    gam: float = 0.25
    seed: int = 0
    cost_scale: float | None = None  # USD; default: the largest backend's cost of a typical call
    spend_target_usd: float | None = None  # per call: lam follows it online (see service.SpendController)
    spend_rate: float = 0.05
    family_strength: float = 20.0
    capacity: int = 64


@dataclass(frozen=True)
class ServeConfig:
    backends: tuple[Backend, ...]
    policy: PolicyConfig
    presets: dict[str, tuple[float, float]]  # name -> (lam, gam), for model "router:<name>"
    state: Path  # ends in .npz (appended when the config's does not, as Router.save does)
    decision_log: Path
    host: str = "127.0.0.1"
    port: int = 8000
    save_every: int = 100
    log_prompts: bool = False
    max_body_bytes: int = 1_000_000
    upstream_timeout_s: float = 60.0
    admin_token_env: str = "BANDIT_ROUTER_ADMIN_TOKEN"
    client_keys_env: str | None = None
    access_log: bool = False
    fsync_every_line: bool = False  # feedback and admin lines are always fsync'ed; this adds decisions and usage
    source: str = "<config>"
    extra: dict = field(default_factory=dict)


def _check_no_secrets(d: dict, where: str) -> None:
    for k in d:
        low = k.lower()
        if low.endswith("_env"):
            continue
        if _SECRET.search(low):
            raise ConfigError(f"{where}: key {k!r} looks like a secret; secrets are never read from the config "
                              f"file: put it in an environment variable and name that variable (e.g. "
                              f"api_key_env = \"OPENAI_API_KEY\", admin_token_env, client_keys_env)")


def _num(d: dict, key: str, where: str, default=None, *, lo: float | None = 0.0, integer: bool = False):
    if key not in d:
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: {key!r} must be a number, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{where}: {key!r} must be >= {lo}, got {v!r}")
    if integer and int(v) != v:
        raise ConfigError(f"{where}: {key!r} must be an integer, got {v!r}")
    return int(v) if integer else float(v)


def _str(d: dict, key: str, where: str, default=None):
    if key not in d:
        return default
    v = d[key]
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: {key!r} must be a non-empty string, got {v!r}")
    return v


def parse_backend(d: Any, where: str) -> Backend:
    """One backend entry (a TOML table or a JSON object) -> Backend; ConfigError naming the key otherwise."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a backend must be a table/object, got {type(d).__name__}")
    _check_no_secrets(d, where)
    unknown = set(d) - _BACKEND_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; a backend has {sorted(_BACKEND_KEYS)}")
    name = _str(d, "name", where)
    if name is None:
        raise ConfigError(f"{where}: 'name' is required")
    where = f"{where} ({name!r})"
    if name == "router" or name.startswith("router:"):
        raise ConfigError(f"{where}: 'router' and 'router:<preset>' are reserved model names")
    base_url = _str(d, "base_url", where)
    if base_url is None or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'base_url' must be an http(s) URL of an OpenAI-compatible API "
                          f"(e.g. https://api.openai.com/v1), got {d.get('base_url')!r}")
    try:  # the prices file's checks, the message naming this backend (not "entry 0" of a one-entry list)
        input_per_m, output_per_m = price_fields(d, where)
    except PricesFileError as exc:
        raise ConfigError(str(exc)) from None
    mean = _num(d, "tokens_mean", where, DEFAULT_TOKENS_MEAN)
    sd = _num(d, "tokens_sd", where, DEFAULT_TOKENS_SD)
    # optional: absent, or null in the JSON the server saves (state file, admin log lines) of a backend without one
    key_env = None if d.get("api_key_env") is None else _str(d, "api_key_env", where)
    return Backend(name=name, base_url=base_url.rstrip("/"), api_key_env=key_env,
                   family=_str(d, "family", where) or family_of(name), input_per_m=input_per_m,
                   output_per_m=output_per_m, model=_str(d, "model", where) or name, tokens_mean=mean, tokens_sd=sd)


def load_config(path, *, overrides: dict | None = None) -> ServeConfig:
    """Read and check a server config file.

    Args:
      path: the TOML file.
      overrides: server keys set from the command line (host, port).
    Returns:
      ServeConfig.
    Raises:
      ConfigError: unreadable file, unknown or secret-looking key, bad value; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    src = str(path)
    _check_no_secrets(doc, src)
    unknown = set(doc) - {"server", "policy", "presets", "backends"}
    if unknown:
        raise ConfigError(f"{src}: unknown sections {sorted(unknown)}; expected server, policy, presets, backends")
    raw = doc.get("backends")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{src}: no [[backends]]: list at least one backend (name, base_url, api_key_env, family, "
                          f"input_per_m, output_per_m)")
    backends = tuple(parse_backend(b, f"{src} [[backends]] #{i + 1}") for i, b in enumerate(raw))
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: duplicate backend names in {names}")

    srv = doc.get("server", {})
    pol = doc.get("policy", {})
    for sec, d, keys in (("server", srv, _SERVER_KEYS), ("policy", pol, _POLICY_KEYS)):
        if not isinstance(d, dict):
            raise ConfigError(f"{src}: [{sec}] must be a table")
        _check_no_secrets(d, f"{src} [{sec}]")
        bad = set(d) - keys
        if bad:
            raise ConfigError(f"{src} [{sec}]: unknown keys {sorted(bad)}; known: {sorted(keys)}")
    srv = dict(srv, **(overrides or {}))
    where = f"{src} [policy]"
    name = _str(pol, "name", where, "thompson")
    if name not in ("thompson", "simple_utility", "epsilon_greedy"):
        raise ConfigError(f"{where}: 'name' must be thompson, simple_utility or epsilon_greedy, got {name!r}")
    cost_scale = _num(pol, "cost_scale", where)
    if cost_scale is not None and cost_scale <= 0:
        raise ConfigError(f"{where}: 'cost_scale' must be > 0 USD")
    target = _num(pol, "spend_target_usd", where)
    if target is not None and target <= 0:
        raise ConfigError(f"{where}: 'spend_target_usd' must be > 0 USD per call")
    policy = PolicyConfig(name=name, lam=_num(pol, "lam", where, 0.3), gam=_num(pol, "gam", where, 0.25),
                          seed=_num(pol, "seed", where, 0, integer=True), cost_scale=cost_scale,
                          spend_target_usd=target, spend_rate=_num(pol, "spend_rate", where, 0.05),
                          family_strength=_num(pol, "family_strength", where, 20.0),
                          capacity=_num(pol, "capacity", where, 64, lo=1, integer=True))
    if policy.capacity < len(backends):
        raise ConfigError(f"{where}: capacity {policy.capacity} < {len(backends)} backends")

    presets = {}
    pre = doc.get("presets", {})
    if not isinstance(pre, dict):
        raise ConfigError(f"{src}: [presets] must be tables [presets.NAME] with lam, gam")
    for pname, p in pre.items():
        w = f"{src} [presets.{pname}]"
        if not isinstance(p, dict) or set(p) - {"lam", "gam"}:
            raise ConfigError(f"{w}: a preset has only 'lam' and 'gam'")
        presets[pname] = (_num(p, "lam", w, policy.lam), _num(p, "gam", w, policy.gam))

    where = f"{src} [server]"
    base = path.resolve().parent

    def _path(key, default):
        v = _str(srv, key, where, default)
        p = Path(v)
        return p if p.is_absolute() else (base / p).resolve()

    port = _num(srv, "port", where, 8000, lo=0, integer=True)
    if port > 65535:
        raise ConfigError(f"{where}: 'port' must be <= 65535")
    timeout = _num(srv, "upstream_timeout_s", where, 60.0, lo=None)
    if timeout <= 0:  # httpx.Timeout(0) would time every upstream call out at once
        raise ConfigError(f"{where}: 'upstream_timeout_s' must be > 0 seconds, got {srv['upstream_timeout_s']!r}")
    flags = {k: srv.get(k, False) for k in ("log_prompts", "access_log", "fsync_every_line")}
    for k, v in flags.items():
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: {k!r} must be true or false, got {v!r}")
    return ServeConfig(
        backends=backends, policy=policy, presets=presets,
        state=npz_path(_path("state", "router_state.npz")), decision_log=_path("decision_log", "decisions.jsonl"),
        host=_str(srv, "host", where, "127.0.0.1"), port=port,
        save_every=_num(srv, "save_every", where, 100, lo=1, integer=True), log_prompts=flags["log_prompts"],
        max_body_bytes=_num(srv, "max_body_bytes", where, 1_000_000, lo=1, integer=True),
        upstream_timeout_s=timeout,
        admin_token_env=_str(srv, "admin_token_env", where, "BANDIT_ROUTER_ADMIN_TOKEN"),
        client_keys_env=_str(srv, "client_keys_env", where), access_log=flags["access_log"],
        fsync_every_line=flags["fsync_every_line"], source=src)
