"""The `bandit-sim serve` subcommand: read the config, build the app, run uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys

from bandit_sim.serve.app import create_app
from bandit_sim.serve.config import load_config

__all__ = ["add_serve_subparser", "main"]


def add_serve_subparser(sub) -> argparse.ArgumentParser:
    """Register `serve` on the `bandit-sim` subparsers."""
    s = sub.add_parser("serve", help="an OpenAI-compatible routing server in front of your LLMs (docs/serve.md)")
    _serve_args(s)
    return s


def main(argv=None) -> int:
    """`python -m bandit_sim.serve --config FILE`: the same as `bandit-sim serve`, without loading the experiments."""
    p = argparse.ArgumentParser(prog="python -m bandit_sim.serve", description="the bandit-sim routing server")
    _serve_args(p)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # ConfigError, PricesFileError
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _serve_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", required=True, help="the server's TOML config (backends, policy, paths)")
    s.add_argument("--host", help="listen address (default: the config's, else 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default: the config's, else 8000)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    import uvicorn  # the server's own dependency; only `serve` needs it loaded

    over = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    cfg = load_config(args.config, overrides=over)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per upstream request
    app = create_app(cfg)
    print(f"bandit-sim serve: {len(cfg.backends)} backends from {cfg.source}, listening on "
          f"http://{cfg.host}:{cfg.port}", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=args.log_level, access_log=cfg.access_log,
                timeout_graceful_shutdown=5)
    return 0
