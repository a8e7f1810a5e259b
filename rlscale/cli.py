"""The ``rlscale`` command line: the edge where user input, files and clocks meet the core.

A user mistake (bad scenario, unknown policy, missing file) prints one line
and exits 2; nothing below this module prints a traceback at a user.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import textwrap

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from rlscale.config import ConfigError

try:  # typer >= 0.20 vendors click
    from typer._click import core as _click_core, formatting as _click_fmt
except ImportError:  # pragma: no cover
    import click.core as _click_core  # type: ignore[no-redef]
    import click.formatting as _click_fmt  # type: ignore[no-redef]


def _fill(text: str, width: int, indent: str) -> str:
    """Paragraphs wrapped at spaces only: a path, a policy spec or an option name is never cut in two."""
    wrap = textwrap.TextWrapper(width=max(width, len(indent) + 10), initial_indent=indent, subsequent_indent=indent,
                                break_long_words=False, break_on_hyphens=False)
    return "\n\n".join(wrap.fill(" ".join(p.split())) for p in text.split("\n\n") if p.strip())


class _HelpFormatter(_click_fmt.HelpFormatter):
    """click's plain help, wrapped at word boundaries (click cuts long words and breaks at hyphens)."""

    def write_text(self, text: str) -> None:
        self.write(_fill(text, self.width, " " * self.current_indent) + "\n")

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(_click_fmt.measure_table(rows)[0], col_max) + col_spacing
        pad = " " * (first_col + self.current_indent)
        for term, text in rows:
            self.write(f"{'':>{self.current_indent}}{term}")
            if not text:
                self.write("\n")
                continue
            if _click_fmt.term_len(term) <= first_col - col_spacing:
                self.write(" " * (first_col - _click_fmt.term_len(term)))
            else:
                self.write("\n" + pad)
            self.write(_fill(text, self.width, pad).lstrip(" ").replace("\n\n", "\n") + "\n")


class _Context(_click_core.Context):
    formatter_class = _HelpFormatter


class _Command(TyperCommand):
    """A command whose options are listed under their ``rich_help_panel`` (plain help has no panels of its own)."""

    context_class = _Context

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                title = "Arguments" if param.param_type_name == "argument" else getattr(param, "rich_help_panel", None) or "Options"
                sections.setdefault(title, []).append(record)
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


class _Group(TyperGroup):
    context_class = _Context


app = typer.Typer(
    cls=_Group,
    name="rlscale",
    help="Reinforcement-learning autoscaling: simulate, train, evaluate, export and serve policies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: wraps at the terminal's width instead of cutting text off with an ellipsis,
    # and shows a flag as ``--json`` rather than ``--json <bool>`` (which invites ``--json true``)
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
)
console = Console()


def _print_version(value: bool) -> None:
    if value:
        from rlscale import __version__

        print(f"rlscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Reinforcement-learning autoscaling: simulate, train, evaluate, export and serve policies."""

err_console = Console(stderr=True)
MAX_SEED = 2**31 - 1
MAX_STEPS = 1_000_000
"""Decision intervals of one episode: a scenario's episode_steps has the same cap (two years of minutes)."""
MAX_SERVE_STEPS = 100_000_000

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn ConfigError into one line on stderr and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """One column per policy, one row per DESIGN.md section 8 metric (and churn per hour where given)."""
    from rlscale.rollout import METRIC_NAMES

    table = Table(title=title, min_width=len(title) + 4)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    for metric in (*METRIC_NAMES, "scaling_actions_per_hour"):
        if not all(metric in rows[name] for name in rows):
            continue
        values = [rows[name][metric] for name in rows]
        table.add_row(metric, *[_fmt(metric, v) for v in values])
    return table


def _fmt(metric: str, value: float) -> str:
    if metric in ("scaling_actions", "rebalances"):
        return f"{value:.0f}"
    if metric == "cost_usd":
        return f"{value:.2f}"
    if metric in ("episode_reward", "scaling_actions_per_hour"):
        return f"{value:.1f}"
    return f"{value:.3f}"


@app.command(short_help='One policy on one seeded episode: cost, SLO, drops, churn.')
@user_errors
def simulate(
    scenario: str = typer.Option("web-diurnal", help="scenario name in envs/ or a YAML path"),
    policy: str = typer.Option("hpa", help="hpa | static | target_tracking | predictive | oracle | ppo:models/NAME"),
    steps: int | None = typer.Option(None, min=1, max=MAX_STEPS, help="decision intervals (default: the scenario's episode)"),
    seed: int = typer.Option(10_000, min=0, max=MAX_SEED, help="episode seed (10000 and up: never used in training)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    history_days: float | None = typer.Option(None, min=0.0, max=14.0, help="days before each episode a policy that reads history gets (default: what its card asks for; 1 plays a new service)"),
) -> None:
    """Run one policy on one seeded episode: cost, SLO violations, drops, utilisation, scaling actions.

    Next to it, HPA on the same episode, so that churn (scaling actions per hour) has a yardstick.
    """
    from rlscale.config import load_scenario
    from rlscale.policies import make_policy
    from rlscale.evaluation.report import per_hour
    from rlscale.rollout import run_policy

    sc = load_scenario(scenario)
    pol = make_policy(policy, sc)
    result = run_policy(sc, pol, [seed], steps=steps, history_days=history_days)
    values = result.mean()
    n_steps = steps or sc.episode_steps
    values["scaling_actions_per_hour"] = per_hour(values["scaling_actions"], n_steps, sc.step_s)
    columns = {policy: dict(values)}
    if policy.strip() != "hpa":
        hpa = run_policy(sc, make_policy("hpa", sc), [seed], steps=steps).mean()
        hpa["scaling_actions_per_hour"] = per_hour(hpa["scaling_actions"], n_steps, sc.step_s)
        columns["hpa"] = hpa
        values["hpa_scaling_actions_per_hour"] = hpa["scaling_actions_per_hour"]
    if as_json:
        from rlscale.atomic import finite

        # JSON has no Infinity or NaN (a ratio over a zero): such a metric is null, so the output always parses
        print(json.dumps(finite({"scenario": sc.name, "policy": policy, "seed": seed, "metrics": values}), indent=2, allow_nan=False))
        return
    console.print(metrics_table(f"{sc.name}, seed {seed}, {n_steps} steps", columns))


@app.command(short_help='Train a PPO policy; Ctrl-C or SIGTERM saves a checkpoint.')
@user_errors
def train(
    config: str = typer.Option(..., "--config", help="training file, e.g. train/ppo-web-diurnal.yaml"),
    timesteps: int | None = typer.Option(None, min=1, max=10**10, help="override n_timesteps"),
    seed: int | None = typer.Option(None, min=0, max=999, help="override the training seed"),
    n_envs: int | None = typer.Option(None, min=1, max=4096, help="override the number of parallel simulated clusters"),
    logdir: str = typer.Option("runs", help="parent directory of the run (TensorBoard, checkpoints)"),
    out: str | None = typer.Option(None, help="export the best policy here when done, e.g. models/my-policy"),
    force: bool = typer.Option(False, "--force", help="let --out replace a policy that is already there"),
    resume: str | None = typer.Option(None, help="a run directory or checkpoint to continue from"),
    name: str | None = typer.Option(None, help="run name (default: ppo-<scenario>-s<seed>)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run already in the run directory (default: refuse)"),
    progress: bool = typer.Option(True, help="show progress: a bar on a terminal, a line per 5% otherwise"),
) -> None:
    """Train a PPO autoscaler; Ctrl-C or SIGTERM saves a checkpoint you can --resume.

    A new run into a run directory that already holds one is refused unless --overwrite.
    The best checkpoint is picked by its score on held-out validation seeds: the policy's
    cost over HPA's, plus 100 x any SLO-violation rate or drops above HPA's (lower is better).
    """
    from pathlib import Path

    from rlscale.config import load_train_config

    cfg = load_train_config(config)
    updates = {k: v for k, v in {"n_timesteps": timesteps, "seed": seed, "n_envs": n_envs}.items() if v is not None}
    cfg = cfg.model_copy(update=updates)
    from rlscale.config import load_scenario

    load_scenario(cfg.scenario)
    if out:
        from rlscale.learn.export import check_target

        check_target(Path(out), force=force)  # before training, not after
    run_dir = Path(resume) if resume and Path(resume, "config.json").exists() else Path(logdir) / (name or f"ppo-{'general' if cfg.general else cfg.scenario}-s{cfg.seed}")
    from rlscale.evaluation.demo import say_command
    from rlscale.learn.train import SCORE_MEANING
    from rlscale.learn.train import train as run_training

    command = "rlscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    outcome = run_training(cfg, run_dir, resume=Path(resume) if resume else None, progress_bar=progress, command=command,
                           overwrite=overwrite)
    state = "interrupted; checkpoint saved" if outcome.interrupted else "done"
    console.print(f"{state}: {outcome.timesteps} steps in {outcome.wall_s:.0f} s, best score {outcome.best_score:.3f} "
                  f"({SCORE_MEANING})", soft_wrap=True)
    say_command(console, "resume with:", "rlscale", "train", "--config", config, "--resume", run_dir)
    say_command(console, "watch with: ", "tensorboard", "--logdir", run_dir / "tb")
    if out and not outcome.interrupted:
        from rlscale.learn.export import export_run

        card = export_run(run_dir, Path(out), force=force)
        ev = card["evaluation"]
        console.print(f"exported to {out}: cost vs HPA {ev['cost_vs_hpa']:.3f} on held-out seeds {ev['held_out_seeds'][0]}..{ev['held_out_seeds'][-1]}")


@app.command(short_help="Write policy.npz + card.json from a run's best checkpoint.")
@user_errors
def export(
    run: str = typer.Argument(..., help="a run directory (its best/ checkpoint, else last/), a checkpoint directory or a model.zip"),
    out: str = typer.Option(..., help="output directory, e.g. models/my-policy"),
    seeds: int = typer.Option(10, min=1, max=1000, help="held-out seeds for the card's evaluation against HPA"),
    force: bool = typer.Option(False, "--force", help="replace a policy already in --out (default: refuse and say what is there)"),
) -> None:
    """Write policy.npz + card.json from a training run (loadable without torch or pickle).

    From a run directory the best checkpoint is exported (the one with the best score on the
    held-out validation seeds during training); the last checkpoint only if there is no best.
    The card names the checkpoint it came from.
    """
    from pathlib import Path

    from rlscale.learn.export import export_run, incomplete_note

    card = export_run(Path(run), Path(out), seeds=seeds, force=force)
    ev = card["evaluation"]
    note = incomplete_note(card)
    if note:
        err_console.print(f"warning: {run}: {note}; its held-out evaluation follows", markup=False, highlight=False, soft_wrap=True)
    if card.get("kind") == "general":
        for name, case in ev["cases"].items():
            console.print(metrics_table(f"{name}: held-out seeds {ev['held_out_seeds'][0]}..{ev['held_out_seeds'][-1]}",
                                        {"general": case["ppo"], "hpa": case["hpa"]}))
        console.print(f"mean cost vs HPA: {ev['cost_vs_hpa']:.3f}; wrote {out}/policy.npz and {out}/card.json "
                      f"from the {card['training']['checkpoint']} checkpoint" + (" of an incomplete run" if note else ""))
        return
    console.print(metrics_table(f"{card['scenario']}: held-out seeds {ev['held_out_seeds'][0]}..{ev['held_out_seeds'][-1]}",
                                {"ppo": ev["ppo"], "hpa": ev["hpa"]}))
    console.print(f"cost vs HPA: {ev['cost_vs_hpa']:.3f}; wrote {out}/policy.npz and {out}/card.json "
                  f"from the {card['training']['checkpoint']} checkpoint" + (" of an incomplete run" if note else ""))


@app.command(short_help="Sweep seeds and hyperparameters of a training config on Ray Tune.")
@user_errors
def sweep(
    config: str = typer.Option(..., "--config", help="sweep file, e.g. train/sweeps/web-diurnal-seeds.yaml"),
    address: str | None = typer.Option(None, help="a Ray cluster: auto | ray://HOST:PORT (default: a private local Ray on 127.0.0.1)"),
    max_concurrent: int | None = typer.Option(None, "--max-concurrent", min=1, max=256, help="trials at once (default: the sweep file's, else one per CPU)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted sweep (finished trials are kept)"),
    logdir: str = typer.Option("sweeps", help="parent directory of the sweep (sweeps/NAME: runs, Tune results, tables)"),
    out: str | None = typer.Option(None, help="export the best trial here (default: sweeps/NAME/policy)"),
    force: bool = typer.Option(False, "--force", help="let --out replace a policy already there"),
) -> None:
    """Train every trial of a sweep file on Ray Tune, tabulate them, and export the best (needs rlscale[ray]).

    Each trial is `rlscale train` in a Ray worker with 1 CPU; Ctrl-C stops the sweep and --resume continues it.
    The best trial has the lowest validation score, the rule that picks a run's best checkpoint.
    See docs/SWEEPS.md.
    """
    from rlscale.evaluation.demo import say_command
    from rlscale.learn.sweep import run_sweep

    command = "rlscale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    outcome = run_sweep(config, address=address, max_concurrent=max_concurrent, resume=resume, logdir=logdir,
                        out=out, force=force, command=command,
                        echo=lambda line: console.print(line, markup=False, highlight=False))
    finished = sum(r.status == "finished" for r in outcome.rows)
    md, csv_path = outcome.tables or (None, None)
    console.print(f"{finished}/{len(outcome.rows)} trials finished in {outcome.wall_s:.0f} s; table: {md} and {csv_path}")
    failed = [r.trial.name for r in outcome.rows if r.status == "error"]
    if failed:
        err_console.print(f"warning: {len(failed)} trials failed ({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''}); "
                          f"their errors are in {md}", markup=False, highlight=False)
    if outcome.interrupted:
        say_command(console, "interrupted; continue with:", "rlscale", "sweep", "--config", config, "--resume",
                    *(("--logdir", logdir) if logdir != "sweeps" else ()))
        return
    if outcome.best is None:
        err_console.print(f"error: no trial finished; see {md}", markup=False, highlight=False)
        raise typer.Exit(1)
    ev = (outcome.card or {}).get("evaluation", {})
    console.print(f"best: {outcome.best.trial.name} (validation score {outcome.best.score:.3f}); exported to "
                  f"{outcome.export_dir}: cost vs HPA {ev.get('cost_vs_hpa', float('nan')):.3f} on held-out seeds")
    say_command(console, "watch with: ", "tensorboard", "--logdir", outcome.sweep_dir / "runs")


_POLICY, _GUARDS, _API, _AUDIT, _K8S = "Policy and cluster", "Guard rails", "HTTP API", "Audit log and summary", "Kubernetes and KEDA"


@app.command(short_help='Serve a policy: control loop, guard rails, API, audit log.')
@user_errors
def serve(
    policy: str | None = typer.Option(None, help="the policy: ppo:models/NAME (an exported model) | hpa | static | target_tracking | predictive", rich_help_panel=_POLICY),
    model: str | None = typer.Option(None, help="alias: --model DIR is --policy ppo:DIR", rich_help_panel=_POLICY),
    cluster: str = typer.Option("sim", help="sim (the simulator on an accelerated clock) | local (worker processes + HAProxy + Prometheus) | kubernetes (workloads' scale subresource; needs --cluster-config) | none (HTTP API only)", rich_help_panel=_POLICY),
    scenario: str = typer.Option("web-diurnal", help="scenario name in envs/ or a YAML path (the cluster's services and bounds)", rich_help_panel=_POLICY),
    speedup: float = typer.Option(60.0, min=0.01, max=1e7, help="simulated seconds per wall second (sim only; 60 = one interval per second)", rich_help_panel=_POLICY),
    interval: float | None = typer.Option(None, min=0.1, max=86_400.0, help="decision interval in cluster seconds (default: the scenario's step_s)", rich_help_panel=_POLICY),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="episode seed of the simulated cluster", rich_help_panel=_POLICY),
    steps: int | None = typer.Option(None, min=1, max=MAX_SERVE_STEPS, help="decisions to make (sim default: the scenario's episode)", rich_help_panel=_POLICY),
    dry_run: bool = typer.Option(False, "--dry-run", help="decide and log, never act", rich_help_panel=_POLICY),
    audit_log: str | None = typer.Option(None, help="JSONL audit log, appended to; a torn last line is repaired (default: a new runs/serve/audit-<start time>.jsonl per run)", rich_help_panel=_AUDIT),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback needs --token", rich_help_panel=_API),
    port: int = typer.Option(8080, min=0, max=65535, help="port to bind (0: any free port, printed at start)", rich_help_panel=_API),
    token: str | None = typer.Option(None, envvar="RLSCALE_TOKEN", help="bearer token required by every endpoint but /healthz (visible in `ps`: prefer RLSCALE_TOKEN or --token-file)", rich_help_panel=_API),
    summary: str | None = typer.Option(None, help="write a JSON summary (decisions, fallbacks, episode metrics) here at exit", rich_help_panel=_AUDIT),
    keep_serving: bool = typer.Option(False, "--keep-serving", help="after the last decision keep the HTTP API up until SIGTERM", rich_help_panel=_API),
    max_step_change: int | None = typer.Option(None, min=0, max=512, help="replicas per service per decision (default: the scenario's max_step)", rich_help_panel=_GUARDS),
    max_change_per_minute: int | None = typer.Option(None, min=0, max=100_000, help="replicas per service per minute (default: max_step_change x decisions per minute)", rich_help_panel=_GUARDS),
    scale_down_cooldown: float = typer.Option(0.0, min=0.0, max=7 * 86_400.0, help="seconds after a scale-up before a scale-down (0: off)", rich_help_panel=_GUARDS),
    stale_after: float | None = typer.Option(None, min=0.001, max=7 * 86_400.0, help="metrics older than this (s) are stale (default: 2 intervals)", rich_help_panel=_GUARDS),
    run_dir: str | None = typer.Option(None, help="local cluster: configs, logs and Prometheus data (default: a new temporary directory); a directory where `rlscale cluster up` runs one is attached to, not started", rich_help_panel=_POLICY),
    token_file: str | None = typer.Option(None, help="read the bearer token from this file (keeps it out of `ps`; or set RLSCALE_TOKEN)", rich_help_panel=_API),
    fallback_only: bool = typer.Option(False, "--fallback-only", help="serve a model whose services or pools differ from the cluster's, deciding with the HPA rule only", rich_help_panel=_POLICY),
    audit_max_bytes: int = typer.Option(64 * 1024 * 1024, min=1024, max=1 << 40, help="rotate the audit log when it would grow beyond this many bytes", rich_help_panel=_AUDIT),
    audit_keep: int = typer.Option(5, min=0, max=1000, help="rotated audit logs kept (audit.jsonl.1 .. .N)", rich_help_panel=_AUDIT),
    cluster_config: str | None = typer.Option(None, help="kubernetes: YAML naming each service's workload, PromQL and bounds (docs/KUBERNETES.md)", rich_help_panel=_K8S),
    standby: bool = typer.Option(False, "--standby", help="local (--run-dir) and kubernetes: when another controller holds the cluster's lease, wait and take over when it stops, instead of refusing", rich_help_panel=_POLICY),
    take_over: bool = typer.Option(False, "--take-over", help="kubernetes: start even though an HPA scales the same workload (delete it: the two would fight)", rich_help_panel=_K8S),
    keda_grpc: str | None = typer.Option(None, help="also serve the decisions as a KEDA external scaler (gRPC) on HOST:PORT, e.g. 127.0.0.1:9090", rich_help_panel=_K8S),
    keda_tls: str | None = typer.Option(None, help="folder with tls.crt, tls.key and ca.crt: mTLS for --keda-grpc (needed off loopback)", rich_help_panel=_K8S),
    force: bool = typer.Option(False, "--force", help="let --summary replace a file that is not an rlscale summary", rich_help_panel=_AUDIT),
    history: str | None = typer.Option(None, help="a policy that reads history: each service's past demand from a CSV (timestamp,<service>...) or prometheus=URL (with --history-service); default on sim: the simulator's own days before the episode", rich_help_panel=_POLICY),
    history_days: float = typer.Option(7.0, min=0.0, max=14.0, help="days of history to load (at most 14)", rich_help_panel=_POLICY),
    history_service: list[str] = typer.Option([], help="with --history prometheus=URL: a service.yaml whose queries.arrivals_rps is that service's request rate (repeat per service)", rich_help_panel=_POLICY),
) -> None:
    """Serve a policy: control loop over a cluster + HTTP API (/v1/decide, /v1/status, /healthz, /metrics), with guard rails and an audit log."""

    from rlscale.controller.serve import ServeOptions
    from rlscale.controller.serve import serve as run_serve

    code = run_serve(ServeOptions(
        model=model, policy=policy, cluster=cluster, scenario=scenario, speedup=speedup, interval=interval, seed=seed,
        steps=steps, dry_run=dry_run, audit_log=audit_log, host=host, port=port, token=token, summary=summary,
        keep_serving=keep_serving, max_step_change=max_step_change, max_change_per_minute=max_change_per_minute,
        scale_down_cooldown=scale_down_cooldown, stale_after=stale_after, run_dir=run_dir,
        token_file=token_file, fallback_only=fallback_only, audit_max_bytes=audit_max_bytes, audit_keep=audit_keep,
        cluster_config=cluster_config, take_over=take_over, standby=standby, keda_grpc=keda_grpc, keda_tls=keda_tls,
        force=force, history=history, history_days=history_days, history_services=tuple(history_service),
    ))
    raise typer.Exit(code)


@app.command(short_help='Replay a trace as Poisson arrivals against a local URL.')
@user_errors
def loadgen(
    trace: str = typer.Option("web-diurnal", help="a scenario (its first service's workload) or a timestamp,value CSV"),
    target: str = typer.Option(..., help="URL on loopback, e.g. http://127.0.0.1:PORT/work, or a local cluster's "
                               "--run-dir (its cluster.json names the URL; waits for it)"),
    speedup: float = typer.Option(480.0, min=0.01, max=1e6, help="trace seconds per real second (480: a day in 3 minutes)"),
    duration: float = typer.Option(60.0, min=0.1, max=3600.0, help="real seconds to replay"),
    peak_rps: float | None = typer.Option(None, min=0.001, max=1e5, help="scale the replayed part so its highest rate is this"),
    start_hour: float = typer.Option(0.0, min=0.0, max=24 * 366.0, help="trace time to start at (hours since Monday 00:00)"),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="seed of the trace and of the Poisson arrivals"),
    max_requests: int = typer.Option(200_000, min=1, max=10_000_000, help="hard cap on requests sent"),
    timeout: float = typer.Option(10.0, min=0.1, max=600.0, help="per-request timeout (s)"),
    out: str | None = typer.Option(None, help="write per-request latencies and per-interval results here (JSON)"),
    force: bool = typer.Option(False, "--force", help="let --out replace a file that is not an rlscale loadgen result"),
    wait: float = typer.Option(60.0, min=0.0, help="seconds to wait for a --target run directory's cluster.json"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress lines (waiting, then one per 10 s of the run)"),
) -> None:
    """Replay a trace as open-loop Poisson arrivals against a local URL and report latency."""
    from rlscale.clusters.local.loadgen import run

    def say(line: str) -> None:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    result = run(trace, target, speedup, duration, peak_rps=peak_rps, seed=seed, start_s=start_hour * 3600.0,
                 max_requests=max_requests, timeout_s=timeout, out=out, force=force, wait_s=wait,
                 say=None if quiet else say)
    s = result.summary()
    console.print(
        f"{s['requests']} requests in {s['wall_s']:.1f} s: {s['ok']} ok, {s['failed']} failed; "
        f"latency p50 {s['latency_p50_s'] * 1000:.1f} ms, p95 {s['latency_p95_s'] * 1000:.1f} ms, p99 {s['latency_p99_s'] * 1000:.1f} ms"
        + (f"; wrote {out}" if out else "")
    )
    capped = result.meta.get("capped")
    if capped:
        console.print(
            f"stopped at --max-requests {capped['max_requests']}: {capped['stopped_at_s']:.1f} s of the asked "
            f"{capped['duration_s']:.1f} s were replayed ({capped['planned_requests']} requests planned); "
            "raise --max-requests or lower --peak-rps", soft_wrap=True)


@app.command(short_help='Measure the local cluster and write its scenario file.')
@user_errors
def calibrate(
    cluster: str = typer.Option("local", help="the cluster to measure (local)"),
    out: str = typer.Option("envs/local.yaml", help="scenario file to write"),
    workers: int = typer.Option(2, min=1, max=64, help="workers to saturate when measuring capacity"),
    interval: float = typer.Option(5.0, min=2.0, max=3600.0, help="decision interval of the local cluster (the scenario's step_s)"),
    speedup: float = typer.Option(240.0, min=1.0, max=1e5, help="compression of the scenario's diurnal day (as loadgen --speedup; 240: 6 minutes)"),
    price: float = typer.Option(0.05, min=0.0, max=10_000.0, help="nominal USD per worker-hour"),
    slo: float = typer.Option(0.25, min=0.001, max=3600.0, help="p95 latency SLO (s) written into the scenario"),
    level_seconds: float = typer.Option(6.0, min=3.0, max=600.0, help="seconds per measured load level"),
    force: bool = typer.Option(False, "--force", help="replace the scenario, trace and calibration files already at --out"),
) -> None:
    """Measure the real cluster (CPU per request, cold start, capacity, latency) and write a scenario for the simulator.

    Writes --out, its trace (<out>-diurnal.csv) and <out>.calibration.json; refuses to replace
    any of them (envs/local.yaml is tracked in git) unless --force.
    """
    from pathlib import Path

    from rlscale.config import ConfigError

    if cluster != "local":
        raise ConfigError(f"--cluster {cluster!r}: only 'local' can be calibrated")
    target = Path(out)
    existing = [str(p) for p in (target, target.with_name(f"{target.stem}-diurnal.csv"), target.with_suffix(".calibration.json"))
                if p.exists()]
    if existing and not force:
        raise ConfigError(f"--out {out}: would replace {', '.join(existing)}; pass --force to overwrite, or choose another --out")
    from rlscale.atomic import check_output_file

    for path in (target, target.with_name(f"{target.stem}-diurnal.csv"), target.with_suffix(".calibration.json")):
        check_output_file(path, "--out", ours=None, force=True)  # even with --force: never a link, device or folder
    from rlscale.clusters.local import LocalSettings
    from rlscale.clusters.local.calibrate import calibrate as run_calibration

    sc, m = run_calibration(out, LocalSettings(interval_s=interval), workers=workers, level_s=level_seconds,
                            speedup=speedup, price_per_worker_hour=price, slo_s=slo)
    levels = ", ".join(f"{lv['utilisation']:.0%} -> p95 {lv['p95_s'] * 1000:.0f} ms" for lv in m["latency_under_load"])
    console.print(
        f"capacity {m['capacity_rps_per_worker']:.1f} req/s per worker, CPU {m['cpu_s_per_request'] * 1000:.2f} ms/request, "
        f"cold start {m['cold_start_s']:.2f} s; latency {levels}"
    )
    console.print(f"wrote {out} (scenario {sc.name!r}) and its trace and calibration JSON")


@app.command(short_help='Compare policies on the same held-out seeds, with a report.')
@user_errors
def evaluate(
    scenario: str = typer.Option("web-diurnal", help="scenario name in envs/ or a YAML path"),
    policies: str | None = typer.Option(
        None, help="comma-separated, of ppo:models/NAME, hpa, target_tracking, predictive, static, oracle; "
        "rules take parameters (hpa:target=0.8:window=150), a generalist ppo:models/general:repack=0 "
        "(default: models/<scenario> if shipped, every baseline and the oracle)"),
    seeds: int = typer.Option(10, min=1, max=1000, help="held-out seeds (episodes) per policy"),
    seed_base: int = typer.Option(10_000, min=0, max=MAX_SEED - 1000, help="first seed; training uses seeds below 10000"),
    steps: int | None = typer.Option(None, min=1, max=MAX_STEPS, help="decision intervals per episode (default: the scenario's)"),
    trace: str | None = typer.Option(None, help="replay a real timestamp,value CSV instead of the generator"),
    trace_column: str = typer.Option("value", help="the CSV column holding the load"),
    logdir: str | None = typer.Option(None, help="TensorBoard log dir (default: runs/eval-<scenario>)"),
    report: str | None = typer.Option(None, help="report folder (default: reports/<scenario>)"),
    workers: int = typer.Option(2, min=1, max=2, help="processes (at most 2)"),
    tune: bool = typer.Option(False, "--tune", help="first sweep HPA and predictive settings on the same seeds and add "
                              "the best tuned rule (cheapest within default HPA's SLO violations and drops), and the best "
                              "within 2x HPA's scaling actions and rebalances when that is another"),
    history_days: float | None = typer.Option(None, min=0.0, max=14.0, help="days before each episode a policy that reads history gets (default: what its card asks for; 1 plays a new service)"),
) -> None:
    """Evaluate policies on the same held-out episodes: table, TensorBoard runs, report (Markdown, JSON, PNG).

    Baselines take parameters: hpa:target=0.8:window=150, predictive:target=0.8:headroom=1.1:down=0.1,
    target_tracking:target=0.6:in_cooldown=300.
    """
    from rlscale.evaluation.demo import run_evaluation

    run_evaluation(console, scenario, policies, seeds=seeds, seed_base=seed_base, steps=steps, trace=trace,
                   trace_column=trace_column, logdir=logdir, report=report, workers=workers, tune=tune,
                   history_days=history_days)


@app.command(short_help='The main job: the shipped policy against HPA and the oracle.')
@user_errors
def demo(
    seeds: int = typer.Option(5, min=1, max=1000, help="held-out seeds"),
    steps: int | None = typer.Option(None, min=1, max=MAX_STEPS, help="decision intervals per episode (default: one day)"),
    logdir: str = typer.Option("runs/demo", help="TensorBoard log dir"),
    report: str = typer.Option("reports/demo", help="report folder"),
    workers: int = typer.Option(2, min=1, max=2, help="processes (at most 2)"),
) -> None:
    """The main job: the shipped web-diurnal policy against HPA and the oracle, with TensorBoard runs and a report."""
    from rlscale.evaluation.demo import run_demo

    run_demo(console, seeds=seeds, steps=steps, logdir=logdir, report=report, workers=workers)


from rlscale.assess.commands import register as _register_assess  # noqa: E402 - assess, shadow, shadow-report

_register_assess(app, user_errors, console)


cluster_app = typer.Typer(
    cls=_Group,
    help="The local cluster's data plane (HAProxy, Prometheus, workers) under its own supervisor, so it outlives the "
    "controller: `rlscale serve --cluster local --run-dir DIR` attaches to it.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster", short_help="Start, stop or inspect the local cluster's data plane.")
CLUSTER_DIR = "runs/local-cluster"


@cluster_app.command("up", short_help="Start HAProxy, Prometheus and the workers under a detached supervisor.")
@user_errors
def cluster_up(
    scenario: str = typer.Option("local", help="the local cluster's scenario (envs/local.yaml, written by `rlscale calibrate`)"),
    run_dir: str = typer.Option(CLUSTER_DIR, help="configs, logs, Prometheus data, the supervisor's socket and state"),
    interval: float | None = typer.Option(None, min=1.0, max=3600.0, help="the rates' window in seconds (default: the scenario's step_s)"),
) -> None:
    """Start the local cluster detached; it runs until `rlscale cluster down`, whatever happens to the controller."""
    from rlscale.clusters.local.supervisor import up

    state = up(scenario, run_dir, interval)
    urls = ", ".join(f"{name} {url}" for name, url in state["services"].items())
    console.print(f"local cluster up (supervisor pid {state['pid']}): {urls}; prometheus {state['prometheus']}", markup=False, soft_wrap=True)
    console.print(f"attach a controller with: rlscale serve --cluster local --scenario {scenario} --run-dir {run_dir} ...",
                  markup=False, soft_wrap=True)


@cluster_app.command("down", short_help="Stop the supervisor and every process of the local cluster.")
@user_errors
def cluster_down(run_dir: str = typer.Option(CLUSTER_DIR, help="the run directory given to `rlscale cluster up`")) -> None:
    """Stop everything the local cluster runs; whatever still names the run directory is killed, so nothing is left.

    Exit 0 when something was stopped, 3 when nothing ran there (not running), 2 when the run directory does not exist.
    """
    from pathlib import Path

    from rlscale.clusters.local.supervisor import EXIT_NOT_RUNNING, down

    if not Path(run_dir).is_dir():
        raise ConfigError(f"--run-dir {run_dir}: no such directory; expected the run directory given to `rlscale cluster up`")
    result = down(run_dir)
    if result["remaining"]:
        raise ConfigError(f"--run-dir {run_dir}: processes {result['remaining']} did not exit")
    if not result["supervisor"] and not result["killed_leftovers"]:
        console.print(f"local cluster not running in {result['run_dir']}: nothing to stop", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_NOT_RUNNING)
    what = f"supervisor pid {result['supervisor'][0]}" if result["supervisor"] else "no supervisor was running"
    console.print(f"local cluster down ({what}; {len(result['killed_leftovers'])} leftover processes killed)", markup=False, soft_wrap=True)


@cluster_app.command("status", short_help="What the local cluster runs: replicas, processes, URLs.")
@user_errors
def cluster_status(
    run_dir: str = typer.Option(CLUSTER_DIR, help="the run directory given to `rlscale cluster up`"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Exit 0 when the supervisor runs and answers, 1 when it (or processes of the cluster) run but do not answer, 3 when not running."""
    from rlscale.clusters.local.supervisor import status, status_code

    state = status(run_dir)
    if as_json:
        from rlscale.atomic import finite

        print(json.dumps(finite(state), indent=2, allow_nan=False))
    elif not state["running"] and state.get("leftover_pids"):
        console.print(f"local cluster not running in {state['run_dir']}, but processes {state['leftover_pids']} still name it: "
                      "`rlscale cluster down` stops them", markup=False, soft_wrap=True)
    elif not state["running"]:
        console.print(f"local cluster not running in {state['run_dir']}", markup=False, soft_wrap=True)
    elif not state.get("answering"):
        console.print(f"supervisor pid {state['pid']} runs but does not answer: {state.get('error')}", markup=False, soft_wrap=True)
    else:
        rows = ", ".join(f"{n}: {state['ready'].get(n, 0)} ready / {d} desired" for n, d in state["desired"].items())
        console.print(f"supervisor pid {state['pid']}: {rows}; haproxy pid {state['haproxy_pid']}, "
                      f"prometheus pid {state['prometheus_pid']}, {len(state['worker_pids'])} workers", markup=False, soft_wrap=True)
    raise typer.Exit(status_code(state))


for _typer in (app, cluster_app):  # every command's help through _Command (words never cut, options in panels)
    for _info in _typer.registered_commands:
        if _info.cls in (None, TyperCommand):
            _info.cls = _Command


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a usage error (unknown option, value out of range) is one line on stderr and exit code 2."""
    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover
        from click import exceptions as click  # type: ignore[no-redef]

    try:
        code = app(args=argv, prog_name="rlscale", standalone_mode=False)
    except click.NoArgsIsHelpError as err:
        err.show()
        return 2
    except click.UsageError as err:
        where = f"rlscale {err.ctx.command_path.partition(' ')[2]} --help".replace("  ", " ") if err.ctx else "rlscale --help"
        print(f"error: {err.format_message()} (see {where})", file=sys.stderr)
        return 2
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except getattr(click, "Abort", KeyboardInterrupt):  # this vendored click has no Abort: Ctrl-C at a prompt
        print("Aborted!", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
