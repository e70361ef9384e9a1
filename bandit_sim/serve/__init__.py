"""The routing server: an OpenAI-compatible proxy in front of your LLMs that routes each chat completion with the
live `Router`, learns from `/v1/feedback`, logs every decision and survives a SIGKILL (write-ahead log).

    bandit-sim serve --config router.toml

Layers: above `bandit_sim.router`, beside `bandit_sim.experiments` (imports neither it nor the CLI).
Modules: `config` (the TOML file), `wal` (the JSONL decision log, which is also the feedback write-ahead log),
`service` (router + log + recovery, no HTTP), `app` (FastAPI + httpx), `cli` (the `serve` subcommand).
See docs/serve.md.
"""
