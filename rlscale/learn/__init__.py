"""Training-side modules (DESIGN.md section 2): the generalist's environment and evaluation, and sweeps on Ray Tune.

Nothing here is imported by serving; ``sweep_ray`` is the only module that imports Ray.
"""
