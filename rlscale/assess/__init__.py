"""From a user's own Prometheus history to a scenario they can train on, and to a shadow run beside their autoscaler.

``rlscale assess`` (``assess.run``): PromQL templates of ``service.yaml``
(``service.py``) -> Prometheus ``query_range`` (``history.py``) -> a fitted
scenario, its trace and a fit report (``fit.py``, ``write.py``).
``rlscale shadow`` (``shadow.py``): the controller's decision path in dry-run
over a read-only Prometheus backend, every decision next to what the cluster
actually ran. ``generate.py`` makes a real history to try it on: the local
process cluster under ``rlscale loadgen`` with HPA acting. ``docs/ASSESS.md``
is the manual.
"""
