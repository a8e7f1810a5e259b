"""Evaluation: paired episodes, TensorBoard runs TensorBoard can read, a report with readable plots, one-line errors.

Everything runs for real: policies (an exported PPO policy with random
weights included), the simulator, TensorBoard's own event reader, matplotlib
on its headless backend, and the CLI in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlscale.config import ConfigError
from rlscale.evaluation.evaluate import STEP_TAGS, evaluate, make_config, parse_policies, policy_label, run_name
from rlscale.atomic import staged_dir
from rlscale.evaluation.report import figures, write_outputs
from rlscale.rollout import METRIC_NAMES
from rlscale.evaluation.stats import head_to_head, mean_ci, t_quantile

PROJECT = Path(__file__).resolve().parent.parent


def rlscale(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rlscale.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory: pytest.TempPathFactory):
    """hpa, static, the oracle and an exported PPO policy on 3 seeds of 180 steps, with its outputs written."""
    from helpers import export_random_policy

    root = tmp_path_factory.mktemp("eval")
    model = export_random_policy(root / "model")
    config = make_config("web-diurnal", f"ppo:{model},hpa,static,oracle", seeds=3, steps=180, workers=1)
    result = evaluate(config)
    data = write_outputs(result, root / "report", root / "runs", command="pytest")
    return result, data, root


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (120, 1.9799)])
def test_the_95_percent_t_quantile_matches_the_published_table(df: int, expected: float) -> None:
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_the_confidence_interval_is_t_times_the_standard_error() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    est = mean_ci(x)
    assert est.mean == 2.5 and est.half_width == pytest.approx(3.1824 * x.std(ddof=1) / 2, rel=1e-4)
    assert np.isnan(mean_ci(np.array([5.0])).half_width)


def test_a_win_is_no_worse_on_cost_and_slo_and_better_on_one() -> None:
    record = head_to_head(np.array([1.0, 2.0, 1.0, 3.0, 2.0]), np.array([0.0, 0.0, 0.2, 0.0, 0.1]),
                          np.array([2.0, 1.0, 2.0, 3.0, 2.0]), np.array([0.0, 0.0, 0.0, 0.0, 0.1]))
    assert (record.wins, record.losses, record.mixed, record.ties, record.cheaper) == (1, 1, 1, 2, 2)


# --------------------------------------------------------------------------- evaluation


def test_every_policy_plays_the_same_episodes(small_eval) -> None:
    result, _, _ = small_eval
    arrivals = [r.series["arrivals_rps"] for r in result.results]
    for a in arrivals[1:]:
        np.testing.assert_array_equal(a, arrivals[0])
    assert [r.label for r in result.results] == [result.results[0].label, "hpa", "static", "oracle"]


def test_results_json_has_every_metric_per_seed_with_intervals_and_ratios(small_eval) -> None:
    _, _, root = small_eval
    data = json.loads((root / "report" / "results.json").read_text())
    assert data["seeds"] == [10_000, 10_001, 10_002] and data["steps"] == 180
    by = {p["label"]: p for p in data["policies"]}
    for p in by.values():
        assert set(p["episodes"]) == set(METRIC_NAMES) and all(len(v) == 3 for v in p["episodes"].values())
        assert p["mean"]["cost_usd"]["ci95"] is not None
    assert by["oracle"]["cost_vs_oracle"]["mean"] == pytest.approx(1.0)
    assert by["hpa"]["cost_vs_hpa"]["mean"] == pytest.approx(1.0)
    assert sum(by["static"]["vs_hpa"][k] for k in ("wins", "losses", "ties", "mixed")) == 3
    assert 0 < data["oracle_floor_usd"]["mean"] <= by["oracle"]["mean"]["cost_usd"]["mean"]


def test_the_report_tabulates_every_policy_and_links_its_plots(small_eval) -> None:
    result, _, root = small_eval
    text = (root / "report" / "report.md").read_text()
    assert "| policy | cost_usd | cost / oracle | cost / HPA |" in text
    for r in result.results:
        assert f"| `{r.label}` |" in text
    for name in ("load_capacity.png", "cost_vs_slo.png", "replicas.png", "latency.png"):
        png = root / "report" / name
        assert f"]({name})" in text and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_every_plot_labels_its_axes_with_units_and_gives_each_policy_one_colour_in_a_legend(small_eval) -> None:
    import matplotlib.pyplot as plt

    result, _, _ = small_eval
    labels = [r.label for r in result.results]
    for name, fig in figures(result).items():
        for ax in [a for a in fig.axes if a.get_visible()]:
            assert "(" in ax.get_xlabel() and "(" in ax.get_ylabel(), f"{name}: axis without a unit"
            legend = ax.get_legend()
            assert legend is not None, name
            entries = [t.get_text() for t in legend.get_texts()]
            assert any(label in entry for label in labels for entry in entries), name
        if name in ("cost_vs_slo.png", "replicas.png"):
            ax = fig.axes[0]
            handles = ax.get_legend().legend_handles
            colours = [tuple(np.ravel(h.get_facecolor() if hasattr(h, "get_facecolor") else h.get_color())[:3]) for h in handles]
            assert len(set(colours)) == len(labels), f"{name}: policies share a colour"
        plt.close(fig)


def test_tensorboard_loads_one_run_per_policy_with_every_expected_tag(small_eval) -> None:
    result, _, root = small_eval
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert runs == sorted(run_name(r.label) for r in result.results)
    for r in result.results:
        acc = EventAccumulator(str(root / "runs" / run_name(r.label)))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert set(STEP_TAGS.values()) <= tags
        assert {f"mean/{m}" for m in METRIC_NAMES} <= tags
        steps = acc.Scalars("step/replicas")
        assert len(steps) == 180 and [e.step for e in steps[:3]] == [0, 1, 2]
        # per-seed values are not a time series: no scalar indexed by seed, a distribution and a table instead
        assert not any(t.startswith("episode/") for t in tags)
        assert {f"episode/{m}" for m in METRIC_NAMES} <= set(acc.Tags()["histograms"])
        (histo,) = acc.Histograms("episode/cost_usd")
        costs = np.asarray(r.episodes["cost_usd"], dtype=float)
        assert histo.step == 0 and histo.histogram_value.num == len(costs)
        assert histo.histogram_value.sum == pytest.approx(costs.sum(), rel=1e-9)
        (table,) = acc.Tensors("episode/per_seed")
        text = table.tensor_proto.string_val[0].decode()
        assert text.startswith("| seed | cost_usd") and len(text.splitlines()) == 2 + len(costs)
        hparams = acc.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hparams)


def test_a_trace_replaces_the_generator_scaled_to_the_peak(tmp_path: Path) -> None:
    t = np.arange(3 * 1440) * 60.0
    load = np.round(100.0 + 50.0 * np.sin(2 * np.pi * t / 86_400.0) + 10.0 * (t // 86_400.0), 6)
    csv = tmp_path / "trace.csv"
    csv.write_text("timestamp,load\n" + "".join(f"{a:.0f},{b:.6f}\n" for a, b in zip(t, load)))
    config = make_config("web-diurnal", "hpa", seeds=2, steps=60, trace=str(csv), trace_column="load", workers=1)
    result = evaluate(config)
    arrivals = result.results[0].series["arrivals_rps"]
    scaled = load * (config.scenario.services[0].workload.peak_rps / np.percentile(load, 99))
    assert np.isin(np.round(arrivals, 6), np.round(scaled, 6)).all()


# --------------------------------------------------------------------------- user errors


def test_policy_lists_are_parsed_into_specs_and_short_labels() -> None:
    assert parse_policies(" hpa, oracle ,ppo:models/web-diurnal") == ("hpa", "oracle", "ppo:models/web-diurnal")
    assert policy_label("ppo:models/web-diurnal/") == "ppo:web-diurnal"
    for bad in ("", "hpa,,oracle", "hpa,hpa"):
        with pytest.raises(ConfigError):
            parse_policies(bad)


def test_a_failure_while_writing_leaves_the_previous_folder_untouched_and_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.mkdir()
    (target / "report.md").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(target) as tmp:
            (tmp / "report.md").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "report.md").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    with staged_dir(target) as tmp:
        (tmp / "report.md").write_text("new")
    assert (target / "report.md").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]


BAD_CSV = {
    "header": "time,value\n0,1\n60,2\n",
    "number": "timestamp,value\n0,1\n60,lots\n",
}


@pytest.mark.parametrize(
    "args, says",
    [
        (["--policies", "hpa,bogus"], "unknown policy 'bogus'"),
        (["--policies", "hpa,ppo:models/no-such-model"], "model not found"),
        (["--policies", "hpa,hpa"], "listed twice"),
        (["--trace", "{header}"], "header has no 'timestamp' column"),
        (["--trace", "{number}"], "line 3: non-numeric value in column 'value'"),
        (["--scenario", "no-such-scenario"], "scenario 'no-such-scenario'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, args: list[str], says: str) -> None:
    for name, text in BAD_CSV.items():
        (tmp_path / f"{name}.csv").write_text(text)
    args = [a.format(**{k: str(tmp_path / f"{k}.csv") for k in BAD_CSV}) for a in args]
    (tmp_path / "old-report").mkdir()
    (tmp_path / "old-report" / "report.md").write_text("previous")
    out = rlscale("evaluate", "--seeds", "1", "--steps", "5", *args, "--report", "old-report", "--logdir", "runs",
                  cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], out.stderr
    assert (tmp_path / "old-report" / "report.md").read_text() == "previous"
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".csv")) == ["old-report"]


@pytest.mark.slow
def test_the_demo_evaluates_against_hpa_and_the_oracle_and_says_how_to_open_tensorboard(tmp_path: Path) -> None:
    out = rlscale("demo", "--seeds", "2", "--steps", "120", "--logdir", "runs/demo", "--report", "reports/demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tensorboard --logdir runs/demo" in out.stdout
    assert "hpa" in out.stdout and "oracle" in out.stdout
    data = json.loads((tmp_path / "reports" / "demo" / "results.json").read_text())
    labels = [p["label"] for p in data["policies"]]
    assert "hpa" in labels and "oracle" in labels
    assert (len(labels) == 3 and labels[0].startswith("ppo:")) or "no trained policy" in out.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "demo").iterdir()) == sorted(run_name(x) for x in labels)
