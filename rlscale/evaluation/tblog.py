"""TensorBoard event files written with TensorBoard's own writer and protos (no torch, no TensorFlow).

Evaluation runs in processes that never need torch, and importing it costs
seconds, so scalars and the HParams tab's summaries are built here directly
from ``tensorboard.compat.proto`` and ``tensorboard.plugins.hparams`` protos,
the same ones ``torch.utils.tensorboard`` writes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_STRING
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

HParamValue = str | float | int | bool


class RunWriter:
    """One TensorBoard run (a directory of event files): scalars and an HParams session."""

    def __init__(self, run_dir: str | Path) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(run_dir), max_queue_size=1000, flush_secs=3600)

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(Event(wall_time=wall_time or time.time(), step=int(step), summary=summary))

    def scalars(self, tag: str, values: Sequence[float], start_step: int = 0) -> None:
        now = time.time()
        for i, value in enumerate(values):
            self.scalar(tag, value, start_step + i, now)

    def histogram(self, tag: str, values: Sequence[float], step: int = 0, bins: int = 30) -> None:
        """A distribution of values that share one step, e.g. one metric over evaluation seeds.

        Seeds are not a time axis: as scalars indexed by seed, TensorBoard's
        default smoothing would draw a trend across them. A histogram shows
        their spread in the Distributions and Histograms tabs.
        """
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        counts, edges = np.histogram(v, bins=min(bins, max(1, v.size)))
        proto = HistogramProto(
            min=float(v.min()), max=float(v.max()), num=float(v.size), sum=float(v.sum()),
            sum_squares=float(np.square(v).sum()), bucket_limit=[float(e) for e in edges[1:]],
            bucket=[float(c) for c in counts],
        )
        summary = Summary(value=[Summary.Value(tag=tag, histo=proto)])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Markdown in TensorBoard's Text tab (tables render as tables)."""
        tensor = TensorProto(dtype=DT_STRING, tensor_shape=TensorShapeProto(), string_val=[markdown.encode()])
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        summary = Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def hparams(
        self,
        hparams: Mapping[str, HParamValue],
        metrics: Mapping[str, float],
        domains: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """One HParams session: this run's hyperparameters and final metrics (one row of the HParams table)."""
        self._summary(hparams_experiment(hparams, metrics, domains))
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for key, value in hparams.items():
            if isinstance(value, bool):
                start.hparams[key].bool_value = value
            elif isinstance(value, (int, float)):
                start.hparams[key].number_value = float(value)
            else:
                start.hparams[key].string_value = str(value)
        self._summary(_plugin_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)))
        for tag, value in metrics.items():
            self.scalar(tag, value, 0)
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS"), end_time_secs=time.time())
        self._summary(_plugin_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)))

    def _summary(self, summary: Summary) -> None:
        self._writer.add_event(Event(wall_time=time.time(), step=0, summary=summary))

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hparams_experiment(
    hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], domains: Mapping[str, Sequence[str]] | None = None
) -> Summary:
    """The HParams experiment summary: which columns the table has."""
    domains = domains or {}
    infos = []
    for key, value in hparams.items():
        if isinstance(value, bool):
            kind = "DATA_TYPE_BOOL"
        elif isinstance(value, (int, float)):
            kind = "DATA_TYPE_FLOAT64"
        else:
            kind = "DATA_TYPE_STRING"
        info = api_pb2.HParamInfo(name=key, type=api_pb2.DataType.Value(kind))
        if key in domains:
            info.domain_discrete.extend(list(domains[key]))
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
    )
    return _plugin_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def _plugin_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    data.version = metadata.PLUGIN_DATA_VERSION
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])
