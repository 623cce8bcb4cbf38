"""The tuner's parts: its configuration, the report it keeps (and resumes from), and one module
per phase (probe recipes, rank, search, blame). `coordinator.tune.Tuner` runs them in order."""
