"""The data layer: the table schema and its validation, loaders (bundled, synthetic, LM Arena 55k, user tables),
the model catalog (families, prices), token counting and query features. Imports nothing else of `bandit_sim`.

The bundled compact datasets and their licences live in ``bandit_sim/data/bundled`` (built by
``scripts/build_bundled_data.py``).
"""
