"""`python -m bandit_sim.serve --config router.toml` (the same server as `bandit-sim serve`)."""

from bandit_sim.serve.cli import main

raise SystemExit(main())
