"""Measurements of rlscale, by kind: ``perf/`` (speed: ratios to an anchor run beside them, or absolute
figures with the machine's load), ``quality/`` (what policies achieve; tables, no anchor), ``docs/`` (the
generators of the README's and RESULTS.md's tables). Scripts run from the project root
(``python benchmarks/perf/sim_throughput.py``) and import each other as ``benchmarks.<kind>.<name>``."""
