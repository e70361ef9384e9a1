"""The live router: `Router` (route / observe / add_model / save / load), its state files and token forecasts.

Built on the simulator's own policy functions and sampler, so a router replays a simulated episode decision for
decision. `mf` is the RouteLLM-style matrix-factorisation router (a trained baseline).
"""
