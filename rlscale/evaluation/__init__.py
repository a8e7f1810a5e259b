"""Evaluation: how policies do on scenarios and beside real autoscalers (DESIGN.md section 2: evaluate, report, shadow report)."""
