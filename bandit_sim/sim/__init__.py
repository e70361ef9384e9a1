"""The simulator: routing worlds, policies as pure functions, exact samplers, the two kernels and the NumPy twin.

- `world`: World arrays (N queries x K models) built from a tidy table; `token_model`: the token-model seam.
- `policies`: policy factories (`REGISTRY`), `formulas`: the utility, exploration schedule, hindsight mean,
  family prior and observe step every path shares; `sampling`: the exact counter-based Beta sampler.
- `linear`: the linear routers' priors (cold / family / warm) from a training split and the hierarchical fit.
- `simulate` (`bandit_sim.sim.simulate`): one compiled call for thousands of episodes, through `batched`
  (Thompson sampling hand-batched over episodes), `batched_linear` (linear Thompson sampling, likewise) or
  `kernel` (any policy's step, vmapped); `episode`: keys, query orders and outputs shared by all.
- `reference`: the NumPy twin (an independent per-step re-implementation; never imports a kernel).
"""
