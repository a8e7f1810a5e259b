"""Cluster backends the controller drives: simulated, local (processes + HAProxy + Prometheus)."""
