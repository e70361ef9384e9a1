"""`simulate`: run thousands of routing episodes (over a grid of hyper-parameters) in one compiled call.

Nesting (gymnax/purejaxrl style): each episode is a ``lax.scan`` over chunks of steps; episodes are batched by one
of three kernels -- `bandit_sim.sim.batched` (Thompson sampling hand-batched over episodes, the default for the
policies it declares in ``batched.SERVES``), `bandit_sim.sim.batched_linear` (linear Thompson sampling, likewise) or `bandit_sim.sim.kernel` (every policy's one-episode step, vmapped);
``vmap`` over a grid of hyper-parameters (a leading axis on every Hyper leaf); the episode axis sharded over all
local devices with ``shard_map`` on a 1-D mesh; one ``jit`` outside. Both kernels compute the same episodes
(tests/test_batched.py) from the same formulas (`bandit_sim.sim.formulas`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from bandit_sim.sim import batched, batched_linear, kernel
from bandit_sim.sim.episode import Metrics, Trajectory, chunk_length
from bandit_sim.sim.policies import Hyper, contextual_thompson, resolve_policy
from bandit_sim.sim.world import World, validate_world

__all__ = ["simulate", "lower_simulate", "TRACE_COUNT", "IMPLS"]

TRACE_COUNT = {"simulate": 0}  # incremented each time the kernel is traced (recompilation test)

_STATIC = ("policy", "options", "episodes", "steps", "chunk", "reward_mode", "trajectories",
           "conv_window", "n_devices", "impl")
IMPLS = ("auto", "batched", "generic")


def _simulate_impl(world, key, hyper, conv_threshold, *, policy, options, episodes, steps, chunk,
                   reward_mode, trajectories, conv_window, n_devices, impl):
    TRACE_COUNT["simulate"] += 1
    grid = hyper.lam.ndim == 1
    if impl == "batched":
        fast = batched_linear if policy in batched_linear.SERVES else batched

        def f(h, keys):
            if fast is batched_linear:
                return fast.run_episodes(h, world, keys, conv_threshold, policy=policy, options=options,
                                         steps=steps, chunk=chunk, reward_mode=reward_mode,
                                         conv_window=conv_window), None
            out = batched.run_episodes(h, world, keys, conv_threshold, policy=policy, options=options, steps=steps,
                                       chunk=chunk, reward_mode=reward_mode, conv_window=conv_window,
                                       record=trajectories == "arms")
            if trajectories != "arms":
                return out, None
            m, (query, arm) = out
            return m, Trajectory(query, arm, None, None, None, None)
    else:
        def f(h, keys):
            return kernel.run_episodes(h, world, keys, conv_threshold, policy=policy, options=options, steps=steps,
                                       chunk=chunk, reward_mode=reward_mode, trajectories=trajectories,
                                       conv_window=conv_window)
    if grid:
        f = jax.vmap(f, in_axes=(0, None))
    keys = jax.random.split(key, episodes)
    if n_devices == 1:
        return f(hyper, keys)
    mesh = Mesh(np.array(jax.local_devices()[:n_devices]), ("e",))
    out_spec = P(None, "e") if grid else P("e")
    return jax.shard_map(f, mesh=mesh, in_specs=(P(), P("e")), out_specs=out_spec, check_vma=False)(hyper, keys)


_simulate_jit = jax.jit(_simulate_impl, static_argnames=_STATIC)


def _check_inputs(world: World, hyper: Hyper, policy, options: dict) -> None:
    """Refuse, with the field named, what would make the kernel loop forever or learn garbage: a World that fails
    `validate_world` (non-finite quality, a query with no model available from step 0, ...), non-finite or
    non-positive priors, and category indices beyond the contextual policy's n_categories."""
    if any(isinstance(x, jax.core.Tracer) for x in (*world, *hyper)):
        return  # inside a trace: the caller's concrete inputs were checked (or are theirs to check)
    validate_world(world)
    for name, x in hyper._asdict().items():
        a = np.asarray(x)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"simulate: hyper.{name} has non-finite values")
    for name in ("prior_alpha", "prior_beta", "lin_noise"):
        if np.any(np.asarray(getattr(hyper, name)) <= 0):
            raise ValueError(f"simulate: hyper.{name} must be > 0")
    if policy is contextual_thompson or options.get("contextual"):
        n_cat, top = int(options.get("n_categories", 1)), int(np.max(np.asarray(world.category)))
        if top >= n_cat:
            raise ValueError(f"simulate: World.category goes up to {top} but options n_categories = {n_cat} "
                             f"(contextual_thompson needs n_categories > every category index)")


def _prepare(world, key, hyper, policy, episodes, steps, chunk, reward, trajectories, conv_threshold,
             conv_window, options, devices, impl="auto"):
    policy = resolve_policy(policy)
    if trajectories not in (False, True, "arms"):
        raise ValueError(f"simulate: trajectories must be False, True or 'arms', got {trajectories!r}")
    if reward not in ("observed", "bernoulli"):
        raise ValueError(f"simulate: reward must be 'observed' or 'bernoulli', got {reward!r}")
    if impl not in IMPLS:
        raise ValueError(f"simulate: impl must be one of {IMPLS}, got {impl!r}")
    fast = (batched.serves(policy, dict(options), trajectories)
            or batched_linear.serves(policy, dict(options), trajectories))
    if impl == "batched" and not fast:
        raise ValueError(f"simulate: impl='batched' runs the Thompson policies (Beta and linear) without "
                         f"trajectories; got policy={policy!r}, options={dict(options)}, trajectories={trajectories}")
    if impl == "auto":
        impl = "batched" if fast else "generic"
    for name, v in (("episodes", episodes), ("steps", steps), ("chunk", chunk), ("conv_window", conv_window)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"simulate: {name} must be a positive int, got {v!r}")
    hyper = Hyper(*(jnp.asarray(x, jnp.float32) for x in hyper))  # Python floats welcome
    _check_inputs(world, hyper, policy, dict(options))
    if hyper.lam.ndim not in (0, 1):
        raise ValueError(f"simulate: hyper.lam must be a scalar or a 1-D grid, got shape {hyper.lam.shape}")
    k = world.quality.shape[1]
    if hyper.prior_alpha.shape[-1] != k:
        raise ValueError(f"simulate: hyper priors have {hyper.prior_alpha.shape[-1]} arms, world has {k}")
    n_local = len(jax.local_devices())
    n_dev = n_local if devices is None else int(devices)
    if not 1 <= n_dev <= n_local:
        raise ValueError(f"simulate: devices={devices} but {n_local} local devices")
    if episodes % n_dev:
        if devices is not None:
            raise ValueError(f"simulate: devices={devices} does not divide episodes={episodes} (shard E evenly, or "
                             "leave devices=None to use the most devices that do)")
        n_dev = math.gcd(episodes, n_dev)
    chunk = chunk_length(steps, chunk)
    world = World(*(jnp.asarray(a) for a in world))
    args = (world, key, hyper, jnp.float32(conv_threshold))
    static = dict(policy=policy, options=tuple(sorted(dict(options).items())), episodes=int(episodes),
                  steps=int(steps), chunk=chunk, reward_mode=reward,
                  trajectories=trajectories, conv_window=int(conv_window), n_devices=n_dev, impl=impl)
    return args, static


def simulate(world: World, key: jax.Array, hyper: Hyper, *, policy="thompson", episodes: int = 1,
             steps: int = 1000, chunk: int = 32, reward: str = "observed", trajectories: bool = False,
             conv_threshold: float = 0.05, conv_window: int = 50, options: tuple | dict = (),
             devices: int | None = None, threefry_partitionable: bool = False, impl: str = "auto",
             ) -> tuple[Metrics, Trajectory | None]:
    """Run `episodes` routing episodes of `steps` queries (per hyper-parameter set) in one compiled call.

    Args:
      world: World (N queries, K arms).
      key: PRNG key; episode e uses split(key, episodes)[e] (same across grid cells: common random numbers).
      hyper: Hyper of scalars, or with a leading grid axis G on every leaf (see `hyper_grid`).
      policy: a policy factory (e.g. `policies.thompson`) or its name in `policies.REGISTRY`.
      episodes: E (static). steps: T (static). chunk: steps whose noise is drawn in bulk (static).
      reward: "observed" | "bernoulli".
      trajectories: also return per-step trajectories (static): True (query, arm, reward, regret, reward uniforms
        and the policy's draws) or "arms" (the query and arm of every step only: light, and served by the
        batched Thompson kernel too).
      conv_threshold: convergence threshold on the window mean of instantaneous regret (traced).
      conv_window: window length (static).
      options: static policy options, e.g. {"sampler": "gaussian", "n_candidates": 2}.
      devices: number of local devices to shard episodes over (default: all that divide E).
      threefry_partitionable: PRNG mode used while tracing (set locally, not globally). False by
        default: on this CPU it compiles ~3x faster and draws normals several times faster; episode
        keys are split per episode, so results do not depend on the device count either way.
      impl: "auto" (default), "batched" or "generic". The Thompson policies without trajectories
        run hand-batched over episodes (bandit_sim/sim/batched.py, several times faster on
        CPU); everything else, or impl="generic", runs the step vmapped over episodes. Both give the
        same episodes (tests/test_batched.py).
    Returns:
      (Metrics with leaves (G?, E, ...), Trajectory with leaves (G?, E, T, ...) or None).
    """
    args, static = _prepare(world, key, hyper, policy, episodes, steps, chunk, reward, trajectories,
                            conv_threshold, conv_window, options, devices, impl)
    with jax.threefry_partitionable(threefry_partitionable):
        return _simulate_jit(*args, **static)


def lower_simulate(world: World, key: jax.Array, hyper: Hyper, **kw):
    """`jax.jit(...).lower(...)` of `simulate` with the same arguments (call .compile() to time compilation).

    Args:
      world, key, hyper, **kw: as for `simulate`.
    Returns:
      (jax.stages.Lowered, args) where `compiled(*args)` runs the kernel.
    """
    defaults = dict(policy="thompson", episodes=1, steps=1000, chunk=32, reward="observed", trajectories=False,
                    conv_threshold=0.05, conv_window=50, options=(), devices=None, impl="auto")
    tp = kw.pop("threefry_partitionable", False)
    defaults.update(kw)
    args, static = _prepare(world, key, hyper, **defaults)
    with jax.threefry_partitionable(tp):
        return _simulate_jit.lower(*args, **static), args
