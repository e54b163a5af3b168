"""The study layer: what every testbed shares to turn a config into rows in a run directory.

- :mod:`.runconfig`: the federation / topology / gossip settings of a config and the study
  expansion (``sweep``, ``variants``).
- :mod:`.schedule_config`: a job's switching schedule and mixer from its config.
- :mod:`.experiment`: the job driver (resume, checkpoints, rows, divergence, progress).

It imports the core, topology and foundation modules only (the layer contract in
``pyproject.toml``); testbeds build on it.
"""
