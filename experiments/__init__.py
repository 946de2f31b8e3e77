"""Command-line entry points: ``python -m experiments.train``, ``python -m experiments.bench``."""
