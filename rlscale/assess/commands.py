"""The ``rlscale assess | plan | shadow | shadow-report`` commands, registered on the CLI's Typer app by ``rlscale.cli``.

They live here so the CLI module only wires them in; the work is in
``rlscale.assess`` and ``rlscale.evaluation.shadow_report``, imported when a
command runs (the CLI starts without numba, matplotlib or the simulator).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any

import typer


def register(app: typer.Typer, user_errors: Callable[[Any], Any], console: Any) -> None:
    """Add the four commands to ``app``; ``user_errors`` turns ConfigError into one line and exit code 2."""

    @app.command()
    @user_errors
    def assess(
        prometheus: str = typer.Option(..., help="Prometheus base URL, e.g. http://127.0.0.1:9090"),
        config: str = typer.Option(..., help="service.yaml: PromQL templates, SLO, limits, node price (envs/services/)"),
        days: float = typer.Option(..., min=1e-5, max=366.0, help="days of history up to --end (fractions are fine: 0.25 = 6 hours; a compressed local run may be minutes)"),
        out: str = typer.Option(..., help="scenario to write, e.g. envs/my-service.yaml (traces beside it)"),
        end: float | None = typer.Option(None, min=0.0, max=1e11, help="end of the history, unix seconds (default: now)"),
        report: str | None = typer.Option(None, help="fit report folder (default: reports/assess-<NAME>)"),
    ) -> None:
        """Fit a scenario to a service's Prometheus history.

        Writes the scenario YAML, its trace CSVs and a fit report (Markdown + PNG)
        whose replay of the history gives the p95 and utilisation errors.
        """
        from rlscale.assess.run import assess as run_assess
        from rlscale.assess.run import describe

        command = "rlscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        result = run_assess(prometheus, config, days, out, end=end, report=report, command=command)
        for line in describe(result):
            console.print(line, markup=False, highlight=False)
        console.print(f"wrote {out}; train with a config whose scenario is {out}", markup=False, highlight=False)

    @app.command()
    @user_errors
    def plan(
        scenario: str = typer.Option(..., help="the scenario to right-size (e.g. the one `rlscale assess` wrote)"),
        usage: str | None = typer.Option(None, help="per-replica usage CSV (default: <scenario>-usage.csv beside it)"),
        pools: str | None = typer.Option(None, help="YAML with `pools:` the plan may choose from (default: the scenario's)"),
        out: str | None = typer.Option(None, help="planned scenario to write (default: <scenario>-planned.yaml beside it)"),
        report: str | None = typer.Option(None, help="plan report folder (default: reports/plan-<NAME>)"),
        percentile: float = typer.Option(0.98, min=0.5, max=1.0, help="CPU target percentile of usage (the VPA's is 0.9)"),
        margin: float = typer.Option(0.15, min=0.0, max=2.0, help="safety margin on CPU and memory (the VPA's 0.15)"),
        half_life_h: float = typer.Option(24.0, min=0.01, max=24 * 366.0, help="half-life of a usage sample's weight, hours (the VPA's 24)"),
        model: str | None = typer.Option(None, help="generalist to check the planned scenario against (default: models/general)"),
    ) -> None:
        """Right-size each service's replica from its usage history and pick the cheapest pool mix.

        CPU: the VPA recommender's method, p98 of a decaying usage histogram + 15%; memory: the peak
        working set + 15%. Writes the planned scenario, ready for `rlscale evaluate`.
        """
        from rlscale.assess.plan import Method
        from rlscale.assess.planning import lines, run_plan

        command = "rlscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        method = Method(cpu_percentile=percentile, upper_percentile=max(percentile, 0.995), margin=margin,
                        half_life_s=half_life_h * 3600.0)
        result, planned, folder, verdict = run_plan(scenario, usage, out, pools, report, method, model, command)
        for line in lines(result):
            console.print(line, markup=False, highlight=False)
        console.print(f"generalist: {verdict}", markup=False, highlight=False)
        console.print(f"wrote {planned}; report {folder / 'plan.md'}; compare: rlscale evaluate --scenario {scenario} "
                      f"--policies hpa,ppo:models/general and the same with --scenario {planned}", markup=False, highlight=False,
                      soft_wrap=True)

    @app.command()
    @user_errors
    def shadow(
        prometheus: str = typer.Option(..., help="Prometheus base URL of the running service"),
        config: str = typer.Option(..., help="the service.yaml used for assess"),
        model: str = typer.Option(..., help="exported policy, e.g. models/my-service"),
        duration: float | None = typer.Option(None, min=0.001, max=1e9, help="seconds to run (default: until Ctrl-C)"),
        scenario: str | None = typer.Option(None, help="the policy's scenario (default: the one in the model's card)"),
        audit_log: str = typer.Option("shadow-audit.jsonl", help="JSONL audit log (appended)"),
    ) -> None:
        """Dry-run a policy beside the autoscaler that acts.

        Read-only: every decision is logged next to what the cluster ran.
        """
        from rlscale.assess.shadow import shadow as run_shadow

        summary = run_shadow(prometheus, config, model, duration_s=duration, scenario=scenario, audit_log=audit_log)
        console.print(f"{summary['decisions']} decisions, fallbacks {summary['fallbacks'] or 'none'}; "
                      f"audit log {audit_log}; next: rlscale shadow-report {audit_log}", markup=False, highlight=False)

    @app.command("shadow-report")
    @user_errors
    def shadow_report(
        audit: str = typer.Argument(..., help="the audit log `rlscale shadow` wrote"),
        out: str | None = typer.Option(None, help="report folder (default: <audit>-report beside the log)"),
        planned: str | None = typer.Option(None, help="a planned scenario (`rlscale plan`): the same runs with its sizes"),
    ) -> None:
        """Report a shadow run: what the policy would have cost.

        Replicas policy vs actual, the simulator's cost and SLO for both,
        disagreements and the guard rails that fired.
        """
        from rlscale.evaluation.shadow_report import write_report

        folder, data = write_report(audit, out, planned=planned)
        for label, m in data["estimates"].items():
            if "error" in m:
                console.print(f"{label}: {m['error']}", markup=False, highlight=False)
            else:
                console.print(f"{label}: cost {m['cost_usd']:.4g} USD, SLO violations {m['slo_violation_rate']:.3f}, "
                              f"dropped {m['dropped_fraction']:.4f}", markup=False, highlight=False)
        console.print(f"disagreements {data['disagreements']}/{data['compared']}; guard rails {data['guards_fired'] or 'none'}; "
                      f"report {folder / 'report.md'}", markup=False, highlight=False)
