"""Measurements of rlscale, by kind: ``perf/`` (speed, each a ratio to an anchor run beside it),
``quality/`` (what policies achieve; tables, no anchor), ``docs/`` (the generators of README and
RESULTS tables). Scripts run from the project root (``python benchmarks/perf/sim_throughput.py``)
and import each other as ``benchmarks.<kind>.<name>``."""
