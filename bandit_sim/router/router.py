"""The live router: the simulator's Thompson policy behind a route / observe API for applications.

    router = Router.from_data(rd)                     # or Router(tokens, models, cost_scale=...)
    d = router.route("Write a haiku about rain")      # Decision: model, tokens, cost, utilities, pi
    router.observe(d, quality=1.0, output_tokens=42)  # cost from the price table unless given
    router.save("router.npz"); router = Router.load("router.npz")

One implementation. A route step is the simulator's step: `pol.sample` (the exact Beta sampler of
`bandit_sim.sim.sampling`) then `pol.choose`; `observe` is `pol.update`; `pol` is `policies.make_policy(...)`, the
same functions `kernel.simulate` scans. Both are jitted once per (policy, capacity, batch bucket): models come
and go by masking slots of a fixed capacity (default 64), so nothing recompiles when numbers or the model list
change (`TRACE_COUNT` counts traces).

Key schedule. The router is episode 0 of `simulate(world, key, episodes=1)`: its keys are
`kernel.episode_keys(key)` and the noise of step t is row t % chunk of `pol.noise(fold_in(k_noise, t // chunk),
chunk)`, exactly as in the kernel. So routing the episode's queries (`kernel.episode_order`) in order, observing
each before the next, reproduces the simulator's arms and totals when the router has the world's arms
(capacity = K: the noise has one column per slot) and chunk = `kernel.chunk_length(T, chunk)`.

Utility (in the simulator's units): U_i = pi_i - lam * pred_cost_i / cost_scale - gam * pred_sd_i / cost_scale,
pred_cost_i = input_tokens * p_in_i + mean_tokens_i * p_out_i and pred_sd_i = sd_tokens_i * p_out_i (USD).
`cost_scale` (USD) makes lam comparable with quality; `from_data` takes the simulator's (the largest mean
predicted cost per query among the models).

Linear Thompson sampling on the query text (`policy="linear_thompson"`): `route` featurises the query (the router's
`featurizer`, or `Query.features`), the step draws x'w_k ~ N(x'm_k, x'S_k x) per slot and `observe` takes the chosen
slot's rank-one step at the decision's features; posteriors are (capacity, D) / (capacity, D, D) arrays, so the
same no-recompile and replay properties hold (`from_data(..., policy="linear_thompson")` fits the featurizer and
the hierarchical weight priors on the training split).

Several `route` calls before their `observe` (delayed feedback) are fine: each decision draws from the posterior
as it is then. `route_batch(B queries)` gives them steps t .. t + B - 1 from the same posterior in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bandit_sim.data.catalog import family_of, price_of
from bandit_sim.data.text_features import BiasOnly, check_feature_rows, featurizer_for_table, featurizer_from_arrays
from bandit_sim.data.features import prompt_features
from bandit_sim.data.schema import SPLITS
from bandit_sim.data.tokens import count_tokens
from bandit_sim.router import state as state_file
from bandit_sim.router.tokens import StandInTokens, tokens_from_state
from bandit_sim.sim import formulas
from bandit_sim.sim.episode import episode_keys
from bandit_sim.sim.linear import fit_linear, linear_prior, train_rows
from bandit_sim.sim.policies import (BetaState, Context, Hyper, LinState, default_hyper, epsilon_greedy, linear_thompson,
                                     make_policy, policy_name, resolve_policy, simple_utility, thompson)
from bandit_sim.sim.priors import family_prior_from_train
from bandit_sim.sim.world import World, pivot_index
from hierarchical.features import query_features

__all__ = ["Router", "Decision", "Query", "RouterInputError", "TRACE_COUNT", "ROUTER_POLICIES"]

TRACE_COUNT = {"route": 0, "observe": 0}  # incremented when the jitted steps are traced
ROUTER_POLICIES = (thompson, simple_utility, epsilon_greedy, linear_thompson)  # Beta posteriors, or linear-Gaussian
DEFAULT_CAPACITY = 64


class RouterInputError(ValueError):
    """Bad input to the router (unknown model or decision, value out of range, empty query)."""


@dataclass(frozen=True)
class Query:
    """A query to route: its text, optionally its prompt length in tokens and an id of yours."""

    text: str
    input_tokens: int | None = None  # counted with cl100k when None
    query_id: str | None = None  # lets `observe` find the decision by your id
    features: Sequence[float] | None = None  # your own feature vector (a router built with user features needs it)


@dataclass(frozen=True)
class Decision:
    """What the router decided for one query, and why."""

    decision_id: str
    model: str
    step: int  # the router's step index t of this decision
    query_id: str | None
    input_tokens: int
    tokens_mean: float  # predicted output tokens of the chosen model
    tokens_interval: tuple[float, float]  # central 80% interval (10% and 90% quantiles)
    tokens_sd: float
    cost_usd: float  # predicted cost of the call: input_tokens * p_in + tokens_mean * p_out
    utilities: dict[str, float] = field(repr=False)  # every candidate's U_i
    pi: dict[str, float] = field(repr=False)  # every candidate's sampled success probability
    explored: bool = False  # the chosen model is not the argmax of U (exploration step)


# ---------------------------------------------------------------- the jitted steps (one implementation: policies.py)


def _policy_world(family: jax.Array, prices: jax.Array, d: int = 1) -> World:
    """A one-row World carrying what the policies read (families, arrivals, the feature width D); the rest is unused."""
    c = family.shape[0]
    z = jnp.zeros((1, c), jnp.float32)
    return World(quality=z, out_tokens=z, cost=z, pred_cost=z, pred_unc=z, features=jnp.zeros((1, 1), jnp.float32),
                 category=jnp.zeros((1,), jnp.int32), family=family, arrival_step=jnp.zeros((c,), jnp.int32),
                 mask=jnp.ones((1, c), bool), prices=prices, x=jnp.ones((1, d), jnp.float32))


def _ctx(t, avail, pred_cost, pred_unc, x=None):
    c = avail.shape[0]
    z = jnp.zeros((c,), jnp.float32)
    x = jnp.ones((1,), jnp.float32) if x is None else x
    return Context(t=t, avail=avail, pred_cost=pred_cost, pred_unc=pred_unc, features=jnp.zeros((1,), jnp.float32),
                   category=jnp.int32(0), quality=z, cost=z, x=x)


@partial(jax.jit, static_argnames=("policy", "options", "chunk"))
def _route_jit(hyper: Hyper, family, prices, pstate, k_noise, k_fb, t0, avail, pred_cost, pred_unc, x, *,
               policy: str, options: tuple, chunk: int):
    """Steps t0 .. t0 + B - 1 from one posterior: arms (B,), pi (B, C), utilities (B, C); x (B, D) query features."""
    TRACE_COUNT["route"] += 1
    pol = make_policy(policy, hyper, _policy_world(family, prices, x.shape[-1]), options)
    b = pred_cost.shape[0]
    # the kernel's noise: step t is row t % chunk of pol.noise(fold_in(k_noise, t // chunk), chunk); draw each
    # chunk the batch touches once (B consecutive steps span at most n_ch chunks)
    n_ch = (chunk - 1 + b - 1) // chunk + 1
    cs = t0 // chunk + jnp.arange(n_ch, dtype=jnp.int32)
    nz = jax.vmap(lambda c: pol.noise(jax.random.fold_in(k_noise, c), chunk))(cs)
    nz = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x.reshape(n_ch * chunk, *x.shape[2:]), t0 % chunk, b, 0),
                      nz)
    ts = t0 + jnp.arange(b, dtype=jnp.int32)

    def one(t, nz_t, pc, pu, xq):
        ctx = _ctx(t, avail, pc, pu, xq)
        draws = pol.sample(pstate, nz_t, jax.random.fold_in(k_fb, t), ctx)  # the kernel's per-step key
        arm = pol.choose(pstate, draws, ctx)
        if hasattr(draws, "pi"):
            pi = draws.pi
        else:  # posterior-mean policies
            a = pstate.prior_a[0] + pstate.s[0]
            b = pstate.prior_b[0] + jnp.maximum(pstate.n[0].astype(jnp.float32) - pstate.s[0], 0.0)
            pi = a / (a + b)
        u = formulas.utility(pi, pc, pu, hyper.lam, hyper.gam, avail)
        return arm, pi, u

    return jax.vmap(one)(ts, nz, pred_cost, pred_unc, x)


@partial(jax.jit, static_argnames=("policy", "options"))
def _observe_jit(hyper: Hyper, family, prices, pstate, arm, reward, t, x, *, policy: str, options: tuple):
    """pol.update for one observed decision (x (D,): the decision's query features)."""
    TRACE_COUNT["observe"] += 1
    pol = make_policy(policy, hyper, _policy_world(family, prices, x.shape[-1]), options)
    c = family.shape[0]
    z = jnp.zeros((c,), jnp.float32)
    return pol.update(pstate, arm, reward, _ctx(t, jnp.ones((c,), bool), z, z, x))


def _bucket(b: int) -> int:
    """Padded batch size: the next power of two (a bounded set of compilations)."""
    return 1 << max(b - 1, 0).bit_length()


# ---------------------------------------------------------------- the router


class Router:
    """A Thompson-sampling LLM router with a token-cost forecast, learning online from observed quality."""

    def __init__(self, tokens, models: Sequence[str], *, families: Mapping[str, str] | None = None,
                 prices: Mapping[str, tuple[float, float]] | None = None, cost_scale: float,
                 lam: float = 0.3, gam: float = 0.25, priors: Mapping[str, tuple[float, float]] | None = None,
                 seed: int = 0, key: jax.Array | None = None, policy: str = "thompson", options: Mapping | None = None,
                 capacity: int | None = None, chunk: int = 32, explore_decay: float = 0.95,
                 min_explore: float = 0.05, family_strength: float = 20.0, featurizer=None,
                 linear_priors: Mapping[str, tuple] | None = None, family_linear_priors: Mapping[str, tuple] | None = None,
                 global_linear_prior: tuple | None = None):
        """Build a router.

        Args:
          tokens: a token forecaster (`StandInTokens` or `PosteriorTokens`) that knows every model.
          models: the K model names to route between.
          families: model -> family (default: `catalog.family_of`).
          prices: model -> (USD per input token, USD per output token) (default: `catalog.price_of`).
          cost_scale: USD per unit of cost in the utility (lam = 1 trades one unit of quality for it).
          lam, gam: cost and uncertainty weights of the utility.
          priors: model -> (alpha, beta) Beta prior of quality (default Beta(1, 1)).
          seed: the router is episode 0 of `simulate(world, jax.random.key(seed), episodes=1)`.
          key: a PRNG key instead of `seed`.
          policy: one of ROUTER_POLICIES (default "thompson", exact Beta sampler).
          options: static policy options (e.g. {"n_candidates": 3}).
          capacity: number of model slots (default max(64, K)); fixed for the router's life.
          chunk: steps per noise chunk (the simulator's effective chunk to replay an episode).
          explore_decay, min_explore: Thompson's exploration schedule eps_t = max(min_explore, decay ** t).
          family_strength: pseudo-count cap of the quality prior `add_model` takes from the family.
          featurizer: linear_thompson only: the query featurizer (`bandit_sim.data.text_features`: TextFeaturizer,
            GivenFeatures or BiasOnly, the default); D = featurizer.dim.
          linear_priors: linear_thompson only: model -> (mean (D,), cov (D, D), noise variance) of its weights
            (e.g. the warm posterior, `bandit_sim.sim.linear.linear_prior`); default its family's prior.
          family_linear_priors: family -> (mean, cov, noise): what `add_model` (and a model without its own prior)
            starts from; default the global prior.
          global_linear_prior: (mean, cov, noise) for a family without a prior (default N(0, I), noise 0.25).
        """
        if resolve_policy(policy) not in ROUTER_POLICIES:
            raise ValueError(f"Router: policy must be one of {[policy_name(p) for p in ROUTER_POLICIES]}, "
                             f"got {policy!r}")
        policy = policy_name(policy)
        models = list(models)
        if len(set(models)) != len(models):
            raise ValueError(f"Router: duplicate model names in {models}")
        if capacity is not None and _number(capacity, "Router: capacity") != int(capacity):
            raise RouterInputError(f"Router: capacity must be an integer number of model slots, got {capacity!r}")
        cap = max(DEFAULT_CAPACITY, len(models)) if capacity is None else int(capacity)
        if cap < max(len(models), 1):
            raise ValueError(f"Router: capacity {cap} < {len(models)} models")
        if _number(cost_scale, "Router: cost_scale") <= 0:
            raise ValueError(f"Router: cost_scale must be a positive number of USD, got {cost_scale!r}")
        if int(chunk) < 1:
            raise ValueError(f"Router: chunk must be >= 1, got {chunk}")
        lam, gam = _arg(lam, "lam"), _arg(gam, "gam")
        explore_decay, min_explore = _arg(explore_decay, "explore_decay", 1.0), _arg(min_explore, "min_explore", 1.0)
        family_strength = _arg(family_strength, "family_strength")
        self.tokens = tokens
        self.policy = policy
        self.options = tuple(sorted(dict(options or {}).items()))
        self.capacity = cap
        self.chunk = int(chunk)
        self.cost_scale = float(cost_scale)
        self.family_strength = float(family_strength)
        self.slots: list[str | None] = [None] * cap  # model name per slot
        self.model_family: dict[str, str] = {}
        self.family_names: list[str] = []  # family index -> name (grows)
        self._prices = np.zeros((cap, 2), np.float64)  # USD per input / output token
        self._family = np.full(cap, -1, np.int32)
        self._dev_cache = None
        self.linear = policy == "linear_thompson"
        self.featurizer = (featurizer if featurizer is not None else BiasOnly()) if self.linear else None
        d = self.featurizer.dim if self.linear else 1
        self.hyper = default_hyper(cap, d=d, lam=lam, gam=gam, explore_decay=explore_decay, min_explore=min_explore)
        self.global_linear_prior = _lin_prior(global_linear_prior or (np.zeros(d), np.eye(d), 0.25), d, "global")
        self.family_linear_priors = {f: _lin_prior(p, d, f"family {f!r}")
                                     for f, p in (family_linear_priors or {}).items()}
        key = jax.random.key(seed) if key is None else key
        with jax.threefry_partitionable(False):  # simulate's PRNG mode
            ek = episode_keys(key)
        self._k_noise, self._k_fb = ek.noise, ek.fallback
        self.step = 0  # decisions made so far (t of the next decision)
        self.saved_extra = None  # the application's `extra` of the file this router was loaded from
        self.pending: dict[str, dict[str, Any]] = {}  # decision id -> what observe needs
        # per-slot bookkeeping (host, float64): decisions, observations, quality, tokens, cost
        self.stats = np.zeros((cap, 5), np.float64)
        self.totals = np.zeros(3, np.float64)  # observed: count, quality sum, cost USD sum
        if self.linear:  # policies.LinState: per-slot weight posteriors (C, D), (C, D, D)
            self.pstate = LinState(self.hyper.lin_mean, self.hyper.lin_cov)
        else:
            self.pstate = BetaState(jnp.zeros((1, cap), jnp.int32), jnp.zeros((1, cap), jnp.float32),
                                    jnp.zeros((1, cap), jnp.float32), self.hyper.prior_alpha[None, :],
                                    self.hyper.prior_beta[None, :])  # policies.BetaState: priors (1, C)
        families = families or {}
        prices = prices or {}
        priors = dict(linear_priors or {}) if self.linear else dict(priors or {})
        unknown = set(priors) - set(models)
        if unknown:
            raise ValueError(f"Router: priors name unknown models {sorted(unknown)}")
        for m in models:
            fam = families.get(m) or family_of(m)
            default = self.linear_family_prior(fam) if self.linear else (1.0, 1.0)
            prior = _lin_prior(priors[m], d, f"model {m!r}") if self.linear and m in priors else priors.get(m, default)
            self._place(m, fam, prices.get(m) or price_of(m), prior)

    # ------------------------------------------------------------ construction helpers

    @classmethod
    def from_data(cls, rd, *, tokens=None, split: str = "test", models: Sequence[str] | None = None,
                  family_prior: bool = False, linear_fit=None, warm: bool = False, **kw) -> "Router":
        """A router for a dataset's models, in the simulator's units (its World's cost scale on `split`).

        Args:
          rd: RoutingData (`load_data(...)`).
          tokens: a forecaster (default: `StandInTokens.from_table(rd.table)`, the simulator's stand-in).
          split: the split whose mean predicted cost per query sets `cost_scale` (as `world_from_table`).
          models: models to route between (default: every model of `split`, sorted by name).
          family_prior: quality priors from each model's family on the training split
            (`bandit_sim.sim.priors.family_prior_from_train`), else Beta(1, 1).
          linear_fit: policy="linear_thompson" only: the hierarchical quality fit behind the weight priors
            (`hierarchical.quality.QualityFit`); None fits one by SVI on the training split (tens of seconds);
            "flat" uses N(0, I) priors. The featurizer (`featurizer=`) defaults to `featurizer_for_table` on the
            training split (text, user features, or the bias only).
          warm: linear_thompson: each model starts from its posterior after the training split (else from its
            family's prior).
          **kw: other `Router` arguments (lam, gam, seed, capacity, chunk, ...).
        Returns:
          Router.
        """
        if split is not None and split not in SPLITS:
            raise RouterInputError(f"Router.from_data: split must be one of {SPLITS} or None (the whole table), "
                                   f"got {split!r}")
        t = rd.table if split is None else rd.table[rd.table["split"] == split]
        if isinstance(models, str):
            raise RouterInputError(f"Router.from_data: models must be a list of model names, got the str {models!r}")
        models = sorted(t["model"].unique()) if models is None else list(models)
        known = set(rd.table["model"])
        absent = [m for m in models if m not in known]
        if absent:
            raise RouterInputError(f"Router.from_data: models {absent} have no rows in {rd.name!r}; its models: "
                                   f"{sorted(known)}")
        tokens = StandInTokens.from_table(rd.table) if tokens is None else tokens
        fam = rd.table.groupby("model")["family"].first()
        families = {m: str(fam[m]) for m in models if m in fam.index}
        if "cost_scale" not in kw:
            kw["cost_scale"] = cost_scale_of(t, models, tokens, kw.get("prices"))
        if resolve_policy(kw.get("policy", "thompson")) is linear_thompson:
            kw.update(_linear_setup(rd, models, families, kw.get("featurizer"), linear_fit, warm))
        if family_prior and "priors" not in kw:
            a, b = family_prior_from_train(rd, models)
            kw["priors"] = {m: (float(x), float(y)) for m, x, y in zip(models, a, b)}
        return cls(tokens, models, families=families, **kw)

    def _place(self, name: str, family: str, price, prior) -> int:
        """Put a model into a free slot (host arrays and posterior); returns the slot."""
        if name in self.slots:
            raise RouterInputError(f"model {name!r} is already routed to")
        free = [i for i, s in enumerate(self.slots) if s is None]
        if not free:
            raise RouterInputError(f"no free slot: capacity {self.capacity} reached; remove a model or build the "
                                   f"router with a larger capacity")
        p = _check_prices(name, price)
        if not self.linear:
            a, b = (float(x) for x in prior)
            if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
                raise RouterInputError(f"quality prior of {name!r} must be Beta(alpha > 0, beta > 0), got {prior!r}")
        i = free[0]
        if family not in self.family_names:
            self.family_names.append(family)
        self.slots[i] = name
        self.model_family[name] = family
        self._prices[i] = p
        self._family[i] = self.family_names.index(family)
        self._dev_cache = None
        self.stats[i] = 0.0
        st = self.pstate
        if self.linear:
            mean, cov, noise = prior
            self.hyper = self.hyper._replace(lin_mean=self.hyper.lin_mean.at[i].set(mean),
                                             lin_cov=self.hyper.lin_cov.at[i].set(cov),
                                             lin_noise=self.hyper.lin_noise.at[i].set(noise))
            self.pstate = LinState(st.mean.at[i].set(mean), st.cov.at[i].set(cov))
            return i
        self.hyper = self.hyper._replace(prior_alpha=self.hyper.prior_alpha.at[i].set(a),
                                         prior_beta=self.hyper.prior_beta.at[i].set(b))
        self.pstate = BetaState(st.n.at[:, i].set(0), st.s.at[:, i].set(0.0), st.s_comp.at[:, i].set(0.0),
                                st.prior_a.at[:, i].set(a), st.prior_b.at[:, i].set(b))
        return i

    # ------------------------------------------------------------ introspection

    @property
    def models(self) -> list[str]:
        """Models currently routed to, in slot order."""
        return [m for m in self.slots if m is not None]

    def prices(self, model: str) -> tuple[float, float]:
        """(USD per input token, USD per output token) of a model."""
        return tuple(float(x) for x in self._prices[self._slot(model)])

    def posterior(self) -> dict[str, tuple]:
        """Current Beta(alpha, beta) of every model's quality (linear_thompson: (mean (D,), cov (D, D)) of its weights)."""
        if self.linear:
            mean, cov = (np.asarray(a, np.float64) for a in (self.pstate.mean, self.pstate.cov))
            return {m: (mean[i], cov[i]) for i, m in enumerate(self.slots) if m is not None}
        a = np.asarray(self.pstate.prior_a[0] + self.pstate.s[0], np.float64)
        b = np.asarray(self.pstate.prior_b[0] + jnp.maximum(self.pstate.n[0].astype(jnp.float32) - self.pstate.s[0], 0.0),
                       np.float64)
        return {m: (float(a[i]), float(b[i])) for i, m in enumerate(self.slots) if m is not None}

    def summary(self) -> dict[str, Any]:
        """Totals over observed decisions and per-model counts (JSON-able)."""
        per = {m: dict(routed=int(self.stats[i, 0]), observed=int(self.stats[i, 1]),
                       mean_quality=float(self.stats[i, 2] / self.stats[i, 1]) if self.stats[i, 1] else None)
               for i, m in enumerate(self.slots) if m is not None}
        n, q, c = self.totals
        return dict(step=self.step, observed=int(n), total_quality=float(q), total_cost_usd=float(c),
                    mean_quality=float(q / n) if n else None, pending=len(self.pending), models=per)

    def _slot(self, model: str) -> int:
        if model not in self.slots:
            raise RouterInputError(f"unknown model {model!r}; routed models: {self.models}")
        return self.slots.index(model)

    # ------------------------------------------------------------ routing

    def _queries(self, queries) -> list[Query]:
        if isinstance(queries, (str, bytes, Query)):
            raise RouterInputError(f"route_batch: queries must be a list of str or Query, got one "
                                   f"{type(queries).__name__} (route(query) routes a single query)")
        out = []
        for j, q in enumerate(queries):
            if isinstance(q, str):
                q = Query(q)
            if not isinstance(q, Query):
                raise RouterInputError(f"query {j}: expected str or Query, got {type(q).__name__}")
            if not isinstance(q.text, str) or not q.text.strip():
                raise RouterInputError(f"query {j}: no text (empty or whitespace-only query)")
            if q.input_tokens is not None and not (isinstance(q.input_tokens, (int, np.integer))
                                                   and q.input_tokens >= 0):
                raise RouterInputError(f"query {j}: input_tokens must be an int >= 0, got {q.input_tokens!r}")
            if q.query_id is not None and any(p["query_id"] == q.query_id for p in self.pending.values()):
                raise RouterInputError(f"query {j}: query_id {q.query_id!r} already has a pending decision")
            out.append(q)
        ids = [q.query_id for q in out if q.query_id is not None]
        if len(set(ids)) != len(ids):
            raise RouterInputError("queries: duplicate query_id in one batch")
        return out

    def route(self, query: str | Query) -> Decision:
        """Choose a model for one query (one step of the policy).

        Args:
          query: the prompt text, or a Query (text, input_tokens, query_id).
        Returns:
          Decision.
        Raises:
          RouterInputError: empty query, no model to route to.
        """
        return self.route_batch([query])[0]

    def route_batch(self, queries: Sequence[str | Query]) -> list[Decision]:
        """Choose models for B queries in one vectorised call (steps t .. t + B - 1, one posterior).

        Args:
          queries: B prompt texts or Query objects.
        Returns:
          B Decisions, in order.
        Raises:
          RouterInputError: an empty query (nothing is routed then), no model to route to.
        """
        qs = self._queries(queries)
        b = len(qs)
        if b == 0:
            return []
        active = [i for i, s in enumerate(self.slots) if s is not None]
        if not active:
            raise RouterInputError("no model to route to: add one with add_model")
        names = [self.slots[i] for i in active]
        in_tok = self._input_tokens(qs)
        xq = self._query_x(qs)  # (B, D) features of the linear router (raises before anything is routed)
        feats = None
        if self.tokens.needs_features:
            feats = query_features([q.text for q in qs], input_tokens=in_tok)
        fc = self.tokens.predict(feats if feats is not None else np.zeros((b, 0), np.float32), names)
        act = np.array(active)
        p_in, p_out = self._prices[act, 0], self._prices[act, 1]
        cost_usd = in_tok[:, None] * p_in[None, :] + fc.mean * p_out[None, :]  # (B, M) float64
        unc_usd = fc.sd * p_out[None, :]
        bp = _bucket(b)
        pc = np.zeros((bp, self.capacity), np.float32)
        pu = np.zeros((bp, self.capacity), np.float32)
        pc[:b, act] = (cost_usd / self.cost_scale).astype(np.float32)  # world_from_table's float64 -> float32 order
        pu[:b, act] = (unc_usd / self.cost_scale).astype(np.float32)
        avail = np.zeros(self.capacity, bool)
        avail[act] = True
        with jax.threefry_partitionable(False):
            arms, pi, u = _route_jit(self.hyper, *self._dev(), self.pstate, self._k_noise, self._k_fb,
                                     np.int32(self.step), avail,
                                     pc, pu, self._pad_x(xq, bp), policy=self.policy,
                                     options=self.options, chunk=self.chunk)
        arms, pi, u = jax.device_get((arms, pi, u))
        col = {s: j for j, s in enumerate(active)}
        out = []
        for r, q in enumerate(qs):
            arm = int(arms[r])
            j = col[arm]
            step = self.step + r
            d = Decision(
                decision_id=f"d{step}", model=self.slots[arm], step=step, query_id=q.query_id,
                input_tokens=int(in_tok[r]), tokens_mean=float(fc.mean[r, j]),
                tokens_interval=(float(fc.lo[r, j]), float(fc.hi[r, j])), tokens_sd=float(fc.sd[r, j]),
                cost_usd=float(cost_usd[r, j]),
                utilities={m: float(u[r, i]) for m, i in zip(names, active)},
                pi={m: float(pi[r, i]) for m, i in zip(names, active)},
                explored=bool(arm != int(np.argmax(u[r]))))
            out.append(d)
        # commit only after everything above succeeded
        xs = xq if self.linear else None
        for r, d in enumerate(out):
            slot = self.slots.index(d.model)
            self.stats[slot, 0] += 1
            self.pending[d.decision_id] = dict(slot=slot, model=d.model, step=d.step, query_id=d.query_id,
                                               input_tokens=d.input_tokens)
            if xs is not None:  # observe updates the posterior at the decision's features
                self.pending[d.decision_id]["x"] = [float(v) for v in xs[r]]
        self.step += b
        return out

    def _dev(self) -> tuple[jax.Array, jax.Array]:
        """Device copies of the slot families and prices (refreshed when models come or go)."""
        if self._dev_cache is None:
            self._dev_cache = (jnp.asarray(self._family), jnp.asarray(self._prices, jnp.float32))
        return self._dev_cache

    def _query_x(self, qs: list[Query]) -> np.ndarray:
        """(B, D) float32 query features of the linear router (B x 1 ones for the Beta policies)."""
        if not self.linear:
            return np.ones((len(qs), 1), np.float32)
        given = [q.features is not None for q in qs]
        if self.featurizer.kind == "given":
            if not all(given):
                raise RouterInputError(f"query {given.index(False)}: this router reads user-supplied features: "
                                       f"give Query(text, features=[...]) with {self.featurizer.dim - 1} values")
            try:
                return self.featurizer.transform(check_feature_rows([q.features for q in qs], self.featurizer.dim - 1))
            except ValueError as exc:
                raise RouterInputError(str(exc)) from exc
        if any(given):
            raise RouterInputError(f"query {given.index(True)}: this router featurises the text "
                                   f"({self.featurizer.kind}); it takes no features")
        return self.featurizer.transform([q.text for q in qs])

    def _pad_x(self, x: np.ndarray, bp: int) -> np.ndarray:
        out = np.ones((bp, x.shape[1]), np.float32)
        out[: x.shape[0]] = x
        return out

    def _input_tokens(self, qs: list[Query]) -> np.ndarray:
        missing = [j for j, q in enumerate(qs) if q.input_tokens is None]
        tok = np.array([q.input_tokens or 0 for q in qs], np.float64)
        if missing:
            tok[missing] = count_tokens([qs[j].text for j in missing])
        return tok

    # ------------------------------------------------------------ feedback

    def observe(self, decision: Decision | str, quality: float, output_tokens: int, cost: float | None = None) -> None:
        """Tell the router how a routed call went (updates the chosen model's posterior).

        Args:
          decision: the Decision, its decision_id, or the query_id given with the query.
          quality: quality of the answer in [0, 1] (the reward).
          output_tokens: tokens the model wrote (>= 0).
          cost: real cost in USD (default: the price table times the tokens).
        Raises:
          RouterInputError: unknown or already observed decision, removed model, quality outside [0, 1],
            negative or non-integer tokens, negative cost. The state is unchanged then.
        """
        did = self._decision_id(decision)
        p = self.pending[did]
        q = _number(quality, "quality")
        if not 0.0 <= q <= 1.0:
            raise RouterInputError(f"quality must lie in [0, 1], got {quality!r}")
        tok = _number(output_tokens, "output_tokens")
        if tok < 0 or tok != int(tok):
            raise RouterInputError(f"output_tokens must be an integer >= 0, got {output_tokens!r}")
        slot = p["slot"]
        if cost is None:
            cost = p["input_tokens"] * self._prices[slot, 0] + tok * self._prices[slot, 1]
        cost = _number(cost, "cost")
        if cost < 0:
            raise RouterInputError(f"cost must be >= 0 USD, got {cost!r}")
        with jax.threefry_partitionable(False):
            new = _observe_jit(self.hyper, *self._dev(), self.pstate, np.int32(slot), np.float32(q),
                               np.int32(p["step"]), np.asarray(p.get("x", [1.0]), np.float32), policy=self.policy,
                               options=self.options)
        self.pstate = new
        del self.pending[did]
        self.stats[slot, 1:] += (1.0, q, tok, cost)
        self.totals += (1.0, q, cost)

    def _decision_id(self, decision) -> str:
        did = decision.decision_id if isinstance(decision, Decision) else decision
        if not isinstance(did, str):
            raise RouterInputError(f"observe: expected a Decision, decision id or query id, got {type(did).__name__}")
        if did in self.pending:
            return did
        by_query = [k for k, p in self.pending.items() if p["query_id"] == did]
        if by_query:
            return by_query[0]
        if did.startswith("d") and did[1:].isdigit() and int(did[1:]) < self.step:
            raise RouterInputError(f"observe: decision {did!r} was already observed (or its model was removed)")
        raise RouterInputError(f"observe: no decision {did!r} was made by this router")

    # ------------------------------------------------------------ models come and go

    def add_model(self, name: str, family: str | None = None, prices: tuple[float, float] | None = None) -> None:
        """Start routing to a new model, with its family's priors for quality and tokens.

        Quality: Beta(1 + w m, 1 + w (1 - m)), m the mean of the family's current posterior means weighted by
        their evidence (alpha + beta - 2), w = min(family_strength, total evidence); Beta(1, 1) without relatives.
        Tokens: the forecaster's family prior (`add_new_model` with n = 0 for the hierarchical model).

        Args:
          name: model name (new to this router).
          family: its family (default `catalog.family_of(name)`).
          prices: (USD per input token, USD per output token) (default `catalog.price_of(name)`).
        Raises:
          RouterInputError: name already present, capacity full, bad prices.
        """
        if not isinstance(name, str) or not name:
            raise RouterInputError(f"add_model: name must be a non-empty str, got {name!r}")
        if name in self.slots:
            raise RouterInputError(f"add_model: model {name!r} is already routed to")
        if None not in self.slots:
            raise RouterInputError(f"add_model: capacity {self.capacity} reached; remove a model first")
        if family is not None and (not isinstance(family, str) or not family.strip()):
            raise RouterInputError(f"add_model: family of {name!r} must be a non-empty str, got {family!r}")
        family = family or family_of(name)
        prices = price_of(name) if prices is None else prices
        _check_prices(name, prices)  # before anything changes (the token model below)
        prior = self.linear_family_prior(family) if self.linear else self.family_prior(family)
        self.tokens.add_model(name, family)
        self._place(name, family, prices, prior)

    def linear_family_prior(self, family: str) -> tuple[np.ndarray, np.ndarray, float]:
        """(mean, cov, noise) a new model of `family` starts from under linear_thompson (else the global prior)."""
        return self.family_linear_priors.get(family, self.global_linear_prior)

    def family_prior(self, family: str) -> tuple:
        """Beta prior of quality a new model of `family` gets now (see `add_model`); linear_thompson: its
        (mean, cov, noise) weight prior (`linear_family_prior`)."""
        if self.linear:
            return self.linear_family_prior(family)
        post = self.posterior()
        rel = [post[m] for m in self.models if self.model_family[m] == family]
        ev = np.array([a + b - 2.0 for a, b in rel])
        mean = np.array([a / (a + b) for a, b in rel])
        tot = float(ev.sum()) if rel else 0.0
        if tot <= 0:
            return 1.0, 1.0
        a, b = formulas.pseudo_count_prior(1.0, 1.0, float((ev * mean).sum()), tot, self.family_strength, xp=np)
        return float(a), float(b)

    def remove_model(self, name: str) -> None:
        """Stop routing to `name`; its pending decisions are dropped (observing them raises).

        Raises:
          RouterInputError: unknown model, or it is the last one.
        """
        slot = self._slot(name)
        self.slots[slot] = None
        self.model_family.pop(name)
        self.tokens.remove_model(name)
        self.pending = {k: p for k, p in self.pending.items() if p["slot"] != slot}

    # ------------------------------------------------------------ persistence

    def save(self, path, *, extra: Mapping[str, Any] | None = None) -> "Path":  # noqa: F821
        """Write the whole router to `path` (.npz: arrays + JSON), atomically; see `bandit_sim.router.state`.

        `extra`: JSON-able data of the application saved in the same file (meta "extra"; a server keeps its
        write-ahead-log position and backends there); `Router.load` gives it back as `router.saved_extra`.
        """
        arrays, meta = _router_to_state(self)
        if extra is not None:
            meta["extra"] = dict(extra)
        return state_file.write_state(path, arrays, meta)

    @classmethod
    def load(cls, path, *, tokens=None) -> "Router":
        """Read a router written by `save` (migrating older versions); see `bandit_sim.router.state`."""
        arrays, meta = state_file.read_and_migrate(path, tokens=tokens)
        try:
            r = _restore(arrays, meta, tokens, path)
        except KeyError as exc:
            raise state_file.RouterStateError(f"{path}: metadata lacks {exc}") from exc
        r.saved_extra = meta.get("extra")
        return r

    # ------------------------------------------------------------ pending decisions (services)

    def reassign(self, decision_id: str, model: str) -> None:
        """Move a pending decision to another model (a service that fell back to `model` after the chosen one
        failed): its feedback then updates `model`'s posterior and the routed counts follow.

        Raises:
          RouterInputError: unknown decision or model.
        """
        did = self._decision_id(decision_id)
        slot = self._slot(model)
        p = self.pending[did]
        self.stats[p["slot"], 0] -= 1
        self.stats[slot, 0] += 1
        p["slot"], p["model"] = slot, model

    def drop(self, decision_id: str) -> None:
        """Forget a pending decision that will get no feedback (its call failed); routed counts follow."""
        did = self._decision_id(decision_id)
        p = self.pending.pop(did)
        self.stats[p["slot"], 0] -= 1

    def restore_pending(self, decision_id: str, model: str, step: int, input_tokens: int,
                        query_id: str | None = None) -> None:
        """Re-create a pending decision from a log (a service replaying decisions made after its last save).

        Advances `step` past it so new decision ids never collide with logged ones.

        Raises:
          RouterInputError: unknown model, or the id is already pending.
        """
        slot = self._slot(model)
        if decision_id in self.pending:
            raise RouterInputError(f"decision {decision_id!r} is already pending")
        self.pending[decision_id] = dict(slot=slot, model=model, step=int(step), query_id=query_id,
                                         input_tokens=int(input_tokens))
        self.stats[slot, 0] += 1
        self.step = max(self.step, int(step) + 1)


def _number(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise RouterInputError(f"{name} must be a number, got {type(x).__name__} {x!r}")
    v = float(x)
    if not math.isfinite(v):
        raise RouterInputError(f"{name} must be finite, got {x!r}")
    return v


def _check_prices(name: str, price) -> np.ndarray:
    """(USD per input token, USD per output token), finite and >= 0, as a float64 (2,) array."""
    try:
        p = np.asarray(price, np.float64).reshape(-1)
    except (TypeError, ValueError):
        p = np.zeros(0)
    if p.shape != (2,) or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise RouterInputError(f"prices of {name!r} must be (usd_per_input_token, usd_per_output_token) >= 0, "
                               f"got {price!r}")
    return p


def _arg(x, name: str, hi: float | None = None) -> float:
    """A finite Router argument >= 0 (and <= hi when given); RouterInputError naming it otherwise."""
    v = _number(x, f"Router: {name}")
    if v < 0 or (hi is not None and v > hi):
        raise RouterInputError(f"Router: {name} must be " + (f"in [0, {hi:g}]" if hi is not None else ">= 0")
                               + f", got {x!r}")
    return v


def _linear_setup(rd, models: list[str], families: dict[str, str], featurizer, fit, warm: bool) -> dict:
    """Router arguments of linear_thompson from a dataset's training split: featurizer and weight priors."""
    train = rd.split("train")
    if featurizer is None:
        featurizer, _ = featurizer_for_table(train)
    out = dict(featurizer=featurizer)
    if isinstance(fit, str) and fit == "flat":
        return out
    rows = train_rows(train, models, featurizer, {m: families.get(m) or family_of(m) for m in models})
    if fit is None:
        fit = fit_linear(rows)
    if np.shape(fit.w_global)[0] != featurizer.dim:
        raise ValueError(f"Router.from_data: linear_fit has {np.shape(fit.w_global)[0]} weights, the featurizer "
                         f"gives {featurizer.dim} features")
    per_fam = linear_prior(fit, np.arange(len(rows.families)), "family")
    glob = linear_prior(fit, np.array([-1]), "cold")
    kind = dict(x=rows.x, quality=rows.quality, arm=rows.arm) if warm else {}
    per_model = linear_prior(fit, rows.family_of_arm, "warm" if warm else "family", **kind)
    out.update(family_linear_priors={f: (per_fam.mean[j], per_fam.cov[j], per_fam.noise[j])
                                     for j, f in enumerate(rows.families)},
               global_linear_prior=(glob.mean[0], glob.cov[0], glob.noise[0]),
               linear_priors={m: (per_model.mean[j], per_model.cov[j], per_model.noise[j])
                              for j, m in enumerate(models)})
    return out


def _lin_prior(prior, d: int, what: str) -> tuple[np.ndarray, np.ndarray, float]:
    """A checked (mean (D,), cov (D, D) symmetric, noise > 0) linear prior."""
    try:
        mean, cov, noise = prior
        mean = np.asarray(mean, np.float32).reshape(-1)
        cov = np.asarray(cov, np.float32)
        noise = float(noise)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Router: the {what} linear prior must be (mean, cov, noise): {exc}") from exc
    if mean.shape != (d,) or cov.shape != (d, d):
        raise ValueError(f"Router: the {what} linear prior must be mean ({d},), cov ({d}, {d}); got {mean.shape}, "
                         f"{cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov)) and noise > 0 and math.isfinite(noise)):
        raise ValueError(f"Router: the {what} linear prior must be finite with noise > 0")
    return mean, 0.5 * (cov + cov.T), noise


def cost_scale_of(table, models: Sequence[str], tokens, prices: Mapping | None = None) -> float:
    """The simulator's cost unit for a table: max over models of the mean predicted cost per query (USD).

    Same arithmetic as `world_from_table` (float64; queries in `pivot_index` order; only present entries).

    Args:
      table: tidy rows of one split.
      models: models in the router.
      tokens: the forecaster (its mean tokens price the calls).
      prices: optional model -> (p_in, p_out); default `catalog.price_of`.
    Returns:
      float USD.
    """
    prompt_ids, _ = pivot_index(table, None)
    sub = table[table["model"].isin(list(models))]
    n, k = len(prompt_ids), len(models)
    qi = {p: i for i, p in enumerate(prompt_ids)}
    mi = {m: j for j, m in enumerate(models)}
    mask = np.zeros((n, k), bool)
    mask[sub["prompt_id"].map(qi).to_numpy(), sub["model"].map(mi).to_numpy()] = True
    in_tok = table.groupby("prompt_id", sort=False)["input_tokens"].max().reindex(prompt_ids).to_numpy(np.float64)
    pr = np.array([(prices or {}).get(m) or price_of(m) for m in models], np.float64)
    feats = None
    if tokens.needs_features:
        feats = prompt_features(table, prompt_ids)
    mean_tok = tokens.predict(feats if feats is not None else np.zeros((n, 0), np.float32), list(models)).mean
    pred_usd = in_tok[:, None] * pr[None, :, 0] + mean_tok * pr[None, :, 1]
    mean_pred = np.where(mask, pred_usd, 0).sum(0) / np.maximum(mask.sum(0), 1)
    return float(mean_pred.max())


# ---------------------------------------------------------------- router <-> (arrays, meta) of the state file


def _router_to_state(r) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    st = r.pstate
    arrays = {"family": r._family, "prices": r._prices, "stats": r.stats,
              "totals": r.totals, "key/noise": jax.random.key_data(r._k_noise),
              "key/fallback": jax.random.key_data(r._k_fb)}
    linear_meta = None
    if r.linear:  # posteriors, the featurizer and the priors add_model takes (arrays, checksummed like the rest)
        arrays.update({"state/mean": st.mean, "state/cov": st.cov})
        arrays.update({f"featurizer/{k}": v for k, v in r.featurizer.to_arrays().items()})
        fams = sorted(r.family_linear_priors)
        for name, (m, c, n) in [("global", r.global_linear_prior)] + [(f"family{j}", r.family_linear_priors[f])
                                                                      for j, f in enumerate(fams)]:
            arrays.update({f"linear/{name}/mean": m, f"linear/{name}/cov": c, f"linear/{name}/noise": np.float64(n)})
        linear_meta = dict(families=fams)
    else:
        arrays.update({"state/n": st.n, "state/s": st.s, "state/s_comp": st.s_comp, "state/prior_a": st.prior_a,
                       "state/prior_b": st.prior_b})
    arrays.update({f"hyper/{k}": v for k, v in r.hyper._asdict().items()})
    arrays = {k: np.asarray(jax.device_get(v)) for k, v in arrays.items()}
    tok_arrays, tok_meta = r.tokens.to_state()
    arrays.update({f"tokens/{k}": np.asarray(v) for k, v in tok_arrays.items()})
    meta = dict(format=state_file.FORMAT, version=state_file.VERSION, policy=r.policy, options=[list(o) for o in r.options],
                capacity=r.capacity, chunk=r.chunk, cost_scale=r.cost_scale, family_strength=r.family_strength,
                step=r.step, slots=r.slots, model_family=r.model_family, family_names=r.family_names,
                pending=r.pending, key_impl=str(jax.random.key_impl(r._k_noise)),
                tokens=dict(kind=r.tokens.kind, meta=tok_meta), linear=linear_meta)
    return arrays, meta


def _check_meta(meta: dict[str, Any], path) -> None:
    """The state file's JSON fields `_restore` reads, checked: RouterStateError naming the file and the field."""
    def bad(key, want):
        return state_file.RouterStateError(f"{path}: metadata field {key!r} must be {want}, got {meta.get(key)!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key in ("capacity", "chunk"):
        if not (is_int(meta[key]) and meta[key] >= 1):
            raise bad(key, "an integer >= 1")
    if not (is_int(meta["step"]) and meta["step"] >= 0):
        raise bad("step", "an integer >= 0")
    if not (is_num(meta["cost_scale"]) and meta["cost_scale"] > 0):
        raise bad("cost_scale", "a finite number > 0 (USD)")
    if not (is_num(meta["family_strength"]) and meta["family_strength"] >= 0):
        raise bad("family_strength", "a finite number >= 0")
    names = [policy_name(p) for p in ROUTER_POLICIES]
    if meta["policy"] not in names:
        raise bad("policy", f"one of {names}")
    if not (isinstance(meta["options"], list) and all(isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)
                                                      for o in meta["options"])):
        raise bad("options", "a list of [name, value] pairs")
    if not (isinstance(meta["slots"], list) and all(m is None or (isinstance(m, str) and m) for m in meta["slots"])):
        raise bad("slots", "a list of model names (null for a free slot)")
    if not (isinstance(meta["model_family"], dict) and all(isinstance(f, str) for f in meta["model_family"].values())
            and all(m in meta["model_family"] for m in meta["slots"] if m is not None)):
        raise bad("model_family", "an object giving every routed model's family")
    if not (isinstance(meta["family_names"], list) and all(isinstance(f, str) for f in meta["family_names"])):
        raise bad("family_names", "a list of family names")
    pend = meta["pending"]
    fields = {"slot": is_int, "model": lambda v: isinstance(v, str), "step": is_int,
              "query_id": lambda v: not isinstance(v, (dict, list)), "input_tokens": is_int}
    if not (isinstance(pend, dict) and all(isinstance(p, dict) and all(f in p and ok(p[f]) for f, ok in fields.items())
                                           for p in pend.values())):
        raise bad("pending", "an object of decision id -> {slot, model, step, query_id, input_tokens}")
    cap, slots = meta["capacity"], meta["slots"]
    for did, p in pend.items():
        if not (0 <= p["slot"] < len(slots) and slots[p["slot"]] == p["model"]):
            raise state_file.RouterStateError(f"{path}: metadata field 'pending': decision {did!r} names slot "
                                              f"{p['slot']} / model {p['model']!r}, which the slots (capacity {cap}) "
                                              f"do not hold")


def _restore(arrays: dict[str, np.ndarray], meta: dict[str, Any], tokens, path):
    _check_meta(meta, path)
    cap = int(meta["capacity"])
    linear = meta["policy"] == "linear_thompson"
    post = ["state/mean", "state/cov", "featurizer/kind", "linear/global/mean", "linear/global/cov",
            "linear/global/noise"] if linear else ["state/n", "state/s", "state/s_comp", "state/prior_a", "state/prior_b"]
    state_file.need(arrays, post + ["family", "prices", "stats", "totals", "key/noise", "key/fallback"]
                    + [f"hyper/{f}" for f in Hyper._fields if linear or not f.startswith("lin_")], path)
    shapes = {"family": (cap,), "prices": (cap, 2), "stats": (cap, 5), "totals": (3,)}
    if linear:
        d = arrays["state/mean"].shape[-1]
        shapes.update({"state/mean": (cap, d), "state/cov": (cap, d, d), "hyper/lin_mean": (cap, d),
                       "hyper/lin_cov": (cap, d, d), "hyper/lin_noise": (cap,)})
    else:
        shapes.update({"state/n": (1, cap), "state/s": (1, cap), "state/s_comp": (1, cap), "state/prior_a": (1, cap),
                       "state/prior_b": (1, cap)})
    for k, shp in shapes.items():
        if arrays[k].shape != shp:
            raise state_file.RouterStateError(f"{path}: array {k!r} has shape {arrays[k].shape}, expected {shp}")
    if len(meta["slots"]) != cap:
        raise state_file.RouterStateError(f"{path}: {len(meta['slots'])} slots for capacity {cap}")
    r = Router.__new__(Router)
    if tokens is None:
        tk = {k[7:]: v for k, v in arrays.items() if k.startswith("tokens/")}
        try:
            tokens = tokens_from_state(meta["tokens"]["kind"], tk, meta["tokens"]["meta"])
        except (KeyError, ValueError) as exc:
            raise state_file.RouterStateError(f"{path}: token model unreadable ({exc})") from exc
    r.tokens = tokens
    r.policy = meta["policy"]
    r.options = tuple(tuple(o) for o in meta["options"])
    r.capacity, r.chunk = cap, int(meta["chunk"])
    r.cost_scale, r.family_strength = float(meta["cost_scale"]), float(meta["family_strength"])
    r.slots = list(meta["slots"])
    r.model_family = dict(meta["model_family"])
    r.family_names = list(meta["family_names"])
    r._prices = arrays["prices"].astype(np.float64)
    r._family = arrays["family"].astype(np.int32)
    r._dev_cache = None
    # files from before the linear routers lack hyper/lin_*: their (unused) defaults
    dflt = default_hyper(cap)
    r.hyper = Hyper(**{f: jnp.asarray(arrays[f"hyper/{f}"] if f"hyper/{f}" in arrays else getattr(dflt, f), jnp.float32)
                       for f in Hyper._fields})
    r._k_noise = jax.random.wrap_key_data(arrays["key/noise"])
    r._k_fb = jax.random.wrap_key_data(arrays["key/fallback"])
    r.step = int(meta["step"])
    r.pending = {k: dict(v) for k, v in meta["pending"].items()}
    r.stats = arrays["stats"].astype(np.float64)
    r.totals = arrays["totals"].astype(np.float64)
    r.linear = linear
    if linear:
        r.pstate = LinState(jnp.asarray(arrays["state/mean"], jnp.float32), jnp.asarray(arrays["state/cov"], jnp.float32))
        try:
            r.featurizer = featurizer_from_arrays({k[11:]: v for k, v in arrays.items() if k.startswith("featurizer/")})
        except (KeyError, IndexError, ValueError) as exc:
            raise state_file.RouterStateError(f"{path}: the query featurizer is unreadable ({exc})") from exc
        if r.featurizer.dim != d:
            raise state_file.RouterStateError(f"{path}: the featurizer gives {r.featurizer.dim} features, the "
                                              f"posteriors have {d}")

        def lin(name):
            state_file.need(arrays, [f"linear/{name}/{f}" for f in ("mean", "cov", "noise")], path)
            return _lin_prior((arrays[f"linear/{name}/mean"], arrays[f"linear/{name}/cov"],
                               float(arrays[f"linear/{name}/noise"])), d, name)

        r.global_linear_prior = lin("global")
        r.family_linear_priors = {f: lin(f"family{j}") for j, f in enumerate(meta["linear"]["families"])}
    else:
        r.featurizer = None
        r.pstate = BetaState(jnp.asarray(arrays["state/n"], jnp.int32), jnp.asarray(arrays["state/s"], jnp.float32),
                             jnp.asarray(arrays["state/s_comp"], jnp.float32),
                             jnp.asarray(arrays["state/prior_a"], jnp.float32),
                             jnp.asarray(arrays["state/prior_b"], jnp.float32))
    missing = [m for m in r.models if m not in _known_models(r.tokens)]
    if missing:
        raise state_file.RouterStateError(f"{path}: the token model has no forecast for routed models {missing}")
    return r


def _known_models(tokens) -> list[str]:
    return list(tokens.models) if hasattr(tokens, "models") else list(tokens.stats)
