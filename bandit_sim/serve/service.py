"""The routing service without HTTP: the live Router, the decision log / write-ahead log, state and recovery.

Everything here runs on one thread (the server's event loop) with no await inside a method, so a decision or a
feedback is routed, logged and applied as one step. Order of a feedback: check it, append it to the log
(flush + fsync), apply it to the router, then the caller answers 200. The state file (the router's `.npz` with
``extra = {log_seq, backends, usage, spend}``) is written atomically every `save_every` logged events, after
every admin change and on shutdown; on start every log line after ``log_seq`` is replayed (`wal.py`).

Token forecast: a `StandInTokens` per backend from the config (``tokens_mean``, ``tokens_sd``; 80% interval
mean -/+ 1.2816 sd, floored at 0); a backend added at run time gets its family's average (`add_model`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from bandit_sim.data.tokens import count_tokens
from bandit_sim.router.router import Decision, Query, Router, RouterInputError
from bandit_sim.router.state import RouterStateError
from bandit_sim.router.tokens import StandInTokens
from bandit_sim.serve.config import TYPICAL_INPUT_TOKENS, Backend, ConfigError, ServeConfig, parse_backend
from bandit_sim.serve.metrics import Metrics
from bandit_sim.serve.wal import DecisionLog, read_log

__all__ = ["RouterService", "ServiceError", "SpendController"]

log = logging.getLogger("bandit_sim.serve")
_Z80 = 1.2815515655446004  # the standard normal's 90% quantile


class ServiceError(Exception):
    """An error for the client: HTTP status, OpenAI error type/code and a clear message."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param


@dataclass
class SpendController:
    """Keeps the mean observed cost per call near a target by moving lam (multiplicative, bounded).

    After each feedback with cost c: ewma <- (1 - a) ewma + a c (a = 0.05, ewma starts at the target);
    lam <- clip(lam * exp(rate * (ewma / target - 1)), 1e-3, 100).
    """

    target: float
    rate: float = 0.05
    ewma: float | None = None

    def update(self, lam: float, cost: float) -> float:
        self.ewma = self.target if self.ewma is None else self.ewma
        self.ewma = 0.95 * self.ewma + 0.05 * cost
        step = max(-1.0, min(1.0, self.rate * (self.ewma / self.target - 1.0)))
        return float(min(100.0, max(1e-3, lam * math.exp(step))))


def _stats(b: Backend) -> np.ndarray:
    return np.array([b.tokens_mean, b.tokens_sd, max(0.0, b.tokens_mean - _Z80 * b.tokens_sd),
                     b.tokens_mean + _Z80 * b.tokens_sd], np.float64)


def default_cost_scale(backends) -> float:
    """The largest backend's forecast cost (USD) of a call with TYPICAL_INPUT_TOKENS input tokens."""
    c = max(TYPICAL_INPUT_TOKENS * b.prices[0] + b.tokens_mean * b.prices[1] for b in backends)
    return c if c > 0 else 1e-6


class RouterService:
    """Router + decision log + state file, as the server uses them."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.backends: dict[str, Backend] = {}
        self.usage: dict[str, list[int]] = {}  # pending decision id -> [prompt_tokens, completion_tokens]
        self.spend = (SpendController(cfg.policy.spend_target_usd, cfg.policy.spend_rate)
                      if cfg.policy.spend_target_usd else None)
        self._since_save = 0
        self.replayed = 0
        self.removed: set[str] = set()  # config backends an admin removed (not re-added from the config on start)
        self.log = DecisionLog(cfg.decision_log, fsync=cfg.fsync_every_line)
        self.router = self._load_or_build()
        self._lam, self._gam = float(self.router.hyper.lam), float(self.router.hyper.gam)  # host copies
        self.metrics.lam.set(self._lam)
        self.metrics.gam.set(self._gam)

    # ------------------------------------------------------------ start: state + replay

    def _build(self) -> Router:
        bs = self.cfg.backends
        tokens = StandInTokens({b.name: _stats(b) for b in bs}, {b.name: b.family for b in bs})
        p = self.cfg.policy
        return Router(tokens, [b.name for b in bs], families={b.name: b.family for b in bs},
                      prices={b.name: b.prices for b in bs},
                      cost_scale=p.cost_scale or default_cost_scale(bs), lam=p.lam, gam=p.gam, seed=p.seed,
                      policy=p.name, capacity=max(p.capacity, len(bs)), family_strength=p.family_strength)

    def _load_or_build(self) -> Router:
        saved_seq = 0
        if self.cfg.state.exists():
            try:
                r = Router.load(self.cfg.state)
            except RouterStateError as exc:
                raise ConfigError(f"cannot restore the router from {self.cfg.state}: {exc}; move the file away to "
                                  f"start fresh (the decision log {self.cfg.decision_log} is then replayed)") from exc
            extra = r.saved_extra or {}
            saved_seq = int(extra.get("log_seq", 0))
            for i, d in enumerate(extra.get("backends", [])):
                b = parse_backend(d, f"{self.cfg.state} backend #{i + 1}")
                self.backends[b.name] = b
            self.usage = {k: list(v) for k, v in extra.get("usage", {}).items()}
            self.removed = set(extra.get("removed", []))
            if self.spend is not None and extra.get("spend_ewma") is not None:
                self.spend.ewma = float(extra["spend_ewma"])
            self._follow_policy(r)
            log.info("restored %s: step %d, %d observed, log seq %d", self.cfg.state, r.step, int(r.totals[0]),
                     saved_seq)
        else:
            r = self._build()
            self.backends = {b.name: b for b in self.cfg.backends}
        self.router = r
        self.replayed = self._replay(saved_seq)
        self.metrics.replayed.set(self.replayed)
        # backends of the config: connection details and prices follow the config; new ones join with their
        # family's priors; one an admin removed stays removed
        for b in self.cfg.backends:
            if b.name in self.removed:
                continue
            self.backends[b.name] = b
            if b.name not in r.models:
                log.info("backend %s of the config joins the saved router (family prior)", b.name)
                self._add(b)
        missing = [m for m in r.models if m not in self.backends]
        for m in missing:  # a routed model nobody can reach: stop routing to it
            log.warning("model %s is in the saved state but has no backend; removing it", m)
            self._remove(m)
        self.save()
        return r

    def _follow_policy(self, r: Router) -> None:
        """A restored router takes the config's [policy] knobs that can change under a live router (lam, gam,
        cost_scale, family_strength: weights of the utility and of add_model's prior); name and capacity are fixed
        for a router's life, so the state's are kept. Every difference is logged as a warning naming the key."""
        p, src = self.cfg.policy, f"{self.cfg.source} [policy]"
        f32 = lambda x: float(np.float32(x))  # noqa: E731 -- the router holds lam and gam as float32
        for key, saved in (("lam", float(r.hyper.lam)), ("gam", float(r.hyper.gam))):
            want = getattr(p, key)
            if f32(want) == f32(saved):
                continue
            if key == "lam" and self.spend is not None:
                log.warning("%s: lam = %g, the restored state's is %g: using the state's (spend_target_usd moves lam "
                            "online; the config's lam is only the first start's)", src, want, saved)
                continue
            log.warning("%s: %s = %g differs from the restored state's %g: using the config's %g", src, key, want,
                        saved, want)
            r.hyper = r.hyper._replace(**{key: jnp.asarray(want, jnp.float32)})
        if p.cost_scale is not None and p.cost_scale != r.cost_scale:
            log.warning("%s: cost_scale = %g differs from the restored state's %g: using the config's %g", src,
                        p.cost_scale, r.cost_scale, p.cost_scale)
            r.cost_scale = float(p.cost_scale)
        if p.family_strength != r.family_strength:
            log.warning("%s: family_strength = %g differs from the restored state's %g: using the config's %g", src,
                        p.family_strength, r.family_strength, p.family_strength)
            r.family_strength = float(p.family_strength)
        if p.name != r.policy:
            log.warning("%s: name = %r differs from the restored state's %r: using the state's (a router's policy is "
                        "fixed for its life; move %s away to start a new router)", src, p.name, r.policy,
                        self.cfg.state)
        if max(p.capacity, len(self.cfg.backends)) != r.capacity:
            log.warning("%s: capacity = %d differs from the restored state's %d: using the state's (fixed for a "
                        "router's life)", src, p.capacity, r.capacity)

    def _replay(self, after: int) -> int:
        r, n = self.router, 0
        for ev in read_log(self.cfg.decision_log):
            if int(ev.get("seq", 0)) <= after:
                continue
            n += 1
            t, did = ev.get("type"), ev.get("id")
            try:
                if t == "decision" and ev["model"] in r.models and did not in r.pending:
                    r.restore_pending(did, ev["model"], ev["step"], ev["input_tokens"], ev.get("query_id"))
                elif t == "usage" and did in r.pending:
                    self.usage[did] = [int(ev["prompt_tokens"]), int(ev["completion_tokens"])]
                elif t == "reroute" and did in r.pending and ev["to"] in r.models:
                    r.reassign(did, ev["to"])
                elif t == "failed" and did in r.pending:
                    r.drop(did)
                    self.usage.pop(did, None)
                elif t == "feedback":
                    self._apply_feedback(did, ev["model"], float(ev["quality"]), int(ev["output_tokens"]),
                                         float(ev["cost_usd"]))
                elif t == "admin" and ev.get("op") == "add" and ev["backend"]["name"] not in r.models:
                    self._add(parse_backend(ev["backend"], "log"))
                    self.removed.discard(ev["backend"]["name"])
                elif t == "admin" and ev.get("op") == "remove" and ev.get("name") in r.models:
                    self._remove(ev["name"])
                    self.removed.add(ev["name"])
            except (RouterInputError, KeyError, ValueError) as exc:
                log.warning("log event %s (%s) not replayed: %s", ev.get("seq"), t, exc)
        if n:
            log.info("replayed %d log events after seq %d", n, after)
        return n

    # ------------------------------------------------------------ state

    @property
    def lam(self) -> float:
        return self._lam

    def save(self) -> None:
        """Write the state file atomically (router + log position + backends + usage of pending decisions)."""
        pend = self.router.pending
        extra = dict(log_seq=self.log.seq, backends=[b.public() for b in self.backends.values()],
                     usage={k: v for k, v in self.usage.items() if k in pend},
                     spend_ewma=None if self.spend is None else self.spend.ewma, removed=sorted(self.removed))
        self.router.save(self.cfg.state, extra=extra)
        self._since_save = 0
        self.metrics.saves.inc()

    def _logged(self) -> None:
        self._since_save += 1
        if self._since_save >= self.cfg.save_every:
            self.save()

    def close(self) -> None:
        self.save()
        self.log.close()

    # ------------------------------------------------------------ routing

    def route(self, text: str, input_tokens: int | None = None, preset: str | None = None,
              prompt: str | None = None) -> Decision:
        """Route one query (the last user message); logs the decision. ServiceError on a bad query or preset."""
        r = self.router
        hyper = r.hyper
        if preset is not None:
            if preset not in self.cfg.presets:
                raise ServiceError(400, f"unknown preset {preset!r}: the config defines "
                                        f"{sorted(self.cfg.presets) or 'no presets'}", param="model",
                                   code="model_not_found")
            lam, gam = self.cfg.presets[preset]
            r.hyper = hyper._replace(lam=jnp.asarray(lam, jnp.float32), gam=jnp.asarray(gam, jnp.float32))
        try:
            d = r.route(Query(text, input_tokens=input_tokens))
        except RouterInputError as exc:
            raise ServiceError(400, str(exc), param="messages") from None
        finally:
            r.hyper = hyper
        ev = dict(type="decision", id=d.decision_id, step=d.step, model=d.model, input_tokens=d.input_tokens,
                  query_id=d.query_id, tokens_mean=round(d.tokens_mean, 3), tokens_sd=round(d.tokens_sd, 3),
                  tokens_interval=[round(x, 3) for x in d.tokens_interval], cost_usd=d.cost_usd,
                  explored=d.explored, lam=self._lam if preset is None else self.cfg.presets[preset][0],
                  gam=self._gam if preset is None else self.cfg.presets[preset][1], preset=preset,
                  utilities={k: round(v, 6) for k, v in d.utilities.items()},
                  pi={k: round(v, 6) for k, v in d.pi.items()})
        if self.cfg.log_prompts and prompt is not None:
            ev["prompt"] = prompt
        self.log.append(ev)
        self.metrics.decisions.labels(d.model).inc()
        if d.explored:
            self.metrics.explored.inc()
        self._logged()
        return d

    def fallbacks(self, d: Decision) -> list[str]:
        """The other models by decreasing utility (the retry order)."""
        return [m for m, _ in sorted(d.utilities.items(), key=lambda kv: -kv[1])
                if m != d.model and m in self.backends and m in self.router.models]

    def reroute(self, d: Decision, to: str, error: str) -> None:
        self.log.append(dict(type="reroute", id=d.decision_id, to=to, error=error, **{"from": d.model}))
        self.router.reassign(d.decision_id, to)
        self.metrics.fallbacks.labels(to).inc()
        self._logged()

    def failed(self, d: Decision, error: str) -> None:
        if d.decision_id in self.router.pending:
            self.log.append(dict(type="failed", id=d.decision_id, error=error))
            self.router.drop(d.decision_id)
            self._logged()

    def record_usage(self, did: str, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """The upstream's usage of a routed call (feedback takes tokens and cost from it)."""
        if did not in self.router.pending or completion_tokens is None:
            return
        pt = int(prompt_tokens) if prompt_tokens is not None else int(self.router.pending[did]["input_tokens"])
        self.usage[did] = [pt, int(completion_tokens)]
        self.log.append(dict(type="usage", id=did, prompt_tokens=pt, completion_tokens=int(completion_tokens)))
        self._logged()

    # ------------------------------------------------------------ feedback

    def feedback(self, did: Any, quality: Any, output_tokens: Any = None, cost_usd: Any = None) -> dict[str, Any]:
        """Check, log (fsync) and apply one feedback; returns what was applied. ServiceError otherwise."""
        r = self.router
        if not isinstance(did, str) or not did:
            raise ServiceError(400, "'decision_id' must be the x-router-decision-id of a routed completion",
                               param="decision_id")
        if did not in r.pending:
            m = re.fullmatch(r"d(\d+)", did)
            if m and int(m.group(1)) < r.step:
                raise ServiceError(409, f"decision {did!r} already has feedback (or its call failed, or its "
                                        f"model was removed); feedback is applied once", param="decision_id",
                                   code="feedback_already_applied")
            raise ServiceError(404, f"unknown decision_id {did!r}: no routed completion has that id",
                               param="decision_id", code="decision_not_found")
        q = _num(quality, "quality")
        if not 0.0 <= q <= 1.0:
            raise ServiceError(400, f"quality must lie in [0, 1], got {quality!r}", param="quality")
        p = r.pending[did]
        use = self.usage.get(did)
        if output_tokens is None:
            if use is None:
                raise ServiceError(409, f"no upstream usage is known for {did!r} (a stream still running, or the "
                                        f"backend sent no usage): send output_tokens with the feedback",
                                   param="output_tokens", code="usage_unknown")
            output_tokens = use[1]
        tok = _num(output_tokens, "output_tokens")
        if tok < 0 or tok != int(tok):
            raise ServiceError(400, f"output_tokens must be an integer >= 0, got {output_tokens!r}",
                               param="output_tokens")
        if cost_usd is None:
            p_in, p_out = r.prices(p["model"])
            in_tok = use[0] if use is not None else p["input_tokens"]
            cost_usd = in_tok * p_in + tok * p_out
        cost = _num(cost_usd, "cost_usd")
        if cost < 0:
            raise ServiceError(400, f"cost_usd must be >= 0, got {cost_usd!r}", param="cost_usd")
        # write-ahead: on disk before the router changes and before the client hears back
        self.log.append(dict(type="feedback", id=did, model=p["model"], step=p["step"],
                             input_tokens=p["input_tokens"], quality=q, output_tokens=int(tok), cost_usd=cost),
                        sync=True)
        self._apply_feedback(did, p["model"], q, int(tok), cost)
        self._logged()
        return dict(decision_id=did, model=p["model"], quality=q, output_tokens=int(tok), cost_usd=cost,
                    applied=True)

    def _apply_feedback(self, did: str, model: str, q: float, tok: int, cost: float) -> None:
        self.router.observe(did, quality=q, output_tokens=tok, cost=cost)
        self.usage.pop(did, None)
        self.metrics.feedback.labels(model).inc()
        self.metrics.spend.labels(model).inc(cost)
        if self.spend is not None:
            lam = self.spend.update(float(self.router.hyper.lam), cost)
            self.router.hyper = self.router.hyper._replace(lam=jnp.asarray(lam, jnp.float32))
            self._lam = float(self.router.hyper.lam)
            self.metrics.lam.set(self._lam)

    # ------------------------------------------------------------ backends at run time

    def _add(self, b: Backend) -> None:
        self.router.add_model(b.name, family=b.family, prices=b.prices)
        self.backends[b.name] = b

    def _remove(self, name: str) -> None:
        self.router.remove_model(name)
        self.backends.pop(name, None)

    def add_backend(self, d: dict) -> dict[str, Any]:
        """Admin: start routing to a new backend (its family's priors); logged and saved at once."""
        try:
            b = parse_backend(d, "backend")
        except ConfigError as exc:
            raise ServiceError(400, str(exc), param="backend") from None
        if b.name in self.backends or b.name in self.router.models:
            raise ServiceError(409, f"backend {b.name!r} already exists; remove it first", param="name")
        try:
            self.router.add_model(b.name, family=b.family, prices=b.prices)
        except RouterInputError as exc:
            raise ServiceError(400, str(exc), param="backend") from None
        self.backends[b.name] = b
        self.removed.discard(b.name)
        self.log.append(dict(type="admin", op="add", backend=b.public()), sync=True)
        self.save()
        a, bb = self.router.posterior()[b.name]
        return dict(added=b.public(), quality_prior=[a, bb])

    def remove_backend(self, name: Any) -> dict[str, Any]:
        """Admin: stop routing to a backend (its pending decisions get no feedback); logged and saved at once."""
        if not isinstance(name, str) or name not in self.router.models:
            raise ServiceError(404, f"no backend {name!r}; backends: {self.router.models}", param="name",
                               code="model_not_found")
        if len(self.router.models) == 1:
            raise ServiceError(400, "cannot remove the last backend", param="name")
        self._remove(name)
        self.removed.add(name)
        self.log.append(dict(type="admin", op="remove", name=name), sync=True)
        self.save()
        return dict(removed=name, models=self.router.models)

    def count_input_tokens(self, texts: list[str]) -> int:
        return int(sum(count_tokens(texts))) if texts else 0


def _num(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ServiceError(400, f"{name} must be a number, got {x!r}", param=name)
    v = float(x)
    if not math.isfinite(v):
        raise ServiceError(400, f"{name} must be finite, got {x!r}", param=name)
    return v
