"""``rlscale assess``: Prometheus history -> fitted scenario, traces and fit report (one call, progress on stderr)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlscale.assess.fit import Fit, fit_service
from rlscale.assess.history import AssessError, History, HistoryClient, fetch, iso
from rlscale.assess.service import load_service
from rlscale.assess.write import errors_line, write_all
from rlscale.config import ConfigError, Scenario


@dataclass
class Assessment:
    scenario: Scenario
    fit: Fit
    history: History
    report: Path


def assess(prometheus: str, config_path: str | Path, days: float, out: str | Path, *, end: float | None = None,
           report: str | Path | None = None, command: str = "rlscale assess", quiet: bool = False) -> Assessment:
    """Read ``days`` of history up to ``end`` (default now), fit, and write the scenario, traces and report."""
    if not days > 0:
        raise ConfigError(f"--days {days}: expected a number of days > 0 (fractions are fine: 0.5 = 12 hours)")
    if not prometheus.startswith(("http://", "https://")):
        raise ConfigError(f"--prometheus {prometheus}: expected an http(s):// URL, e.g. http://127.0.0.1:9090")
    config = load_service(config_path)
    out_path = Path(out)
    if out_path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out}: expected a .yaml path, e.g. envs/my-service.yaml")
    stop = time.time() if end is None else float(end)
    start = stop - days * 86_400.0
    client = HistoryClient(prometheus, timeout_s=config.history.timeout_s)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"assess: reading {iso(start)}..{iso(stop)} from {prometheus} every {config.history.step_s:g} s")
    history = fetch(config, client, start, stop, source=str(config_path), progress=lambda name: say(f"  query {name}"))
    from rlscale.assess.usage import fetch_usage, stale_usage, write_usage

    say("  query usage (cpu_cores, memory_bytes)")
    usage, usage_notes = fetch_usage(config, client, history.t, history.step_s, str(config_path))
    usage_path = out_path.with_name(f"{out_path.stem}-usage.csv")
    if usage is not None:
        usage_notes.append(f"usage: {usage.size} replica-intervals written to {usage_path.name}; "
                           f"size the replica with `rlscale plan --scenario {out_path}`")
    elif stale_usage(usage_path):
        usage_notes.append(f"usage: removed {usage_path.name} of an earlier run: this history has no usage to size from")
    history.notes += usage_notes
    say(f"assess: {history.size} intervals ({int(history.filled.sum())} filled); fitting")
    last = [0.0]

    def progress(frac: float) -> None:
        if frac - last[0] >= 0.25 or frac >= 1.0:
            last[0] = frac
            say(f"  fit {frac:.0%}")

    fit = fit_service(config, history, progress=progress)
    report_dir = Path(report) if report is not None else Path("reports") / f"assess-{out_path.stem}"
    source = {"prometheus": prometheus, "config": str(config_path), "days": days, "end_unix": stop}
    try:
        if usage is not None:
            write_usage(usage_path, [usage])
        elif stale_usage(usage_path):
            usage_path.unlink()  # `rlscale plan` would size an earlier history's usage as this one's
        scenario = write_all(config, fit, history, out_path, report_dir, command, source)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write ({err.strerror or err})") from None
    return Assessment(scenario, fit, history, report_dir)


def describe(a: Assessment) -> list[str]:
    f = a.fit
    return [
        f"capacity {f.capacity_rps:.2f} req/s per replica (from {f.capacity_from}), service time {f.work_s * 1000:.1f} ms "
        f"(cv {f.service_cv:.2f}), cold start {f.cold_start_s:.2f} s ({f.scale_up_events} scale-ups), provisioning {f.provision_delay_s:.2f} s",
        f"replay of {a.history.size} intervals: {errors_line(f)}",
        *(f"note: {n}" for n in a.history.notes + f.notes),
        f"report: {a.report / 'report.md'}",
    ]


__all__ = ["AssessError", "Assessment", "assess", "describe"]


