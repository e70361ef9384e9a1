"""Experiments on top of the simulator and the router: the evaluation protocol, metrics and statistics, the
`compare`, `coldstart`, `sweep` and token-model studies, their reports and the `run` pipeline.

`metrics` is the one source of every reported definition (retention, cost reduction, AIQ, APGR/CPT, regret,
convergence); `stats` holds the intervals and tests.
"""
