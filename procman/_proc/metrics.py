"""Metrics as plain data, written as OpenMetrics text or handed to ``prometheus_client``.

Shared by procman's daemons (procman._metrics) and the worker pool (workers._metrics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Family:
    """One metric: its name (without ``_total`` for a counter), type, help and samples.

    ``samples`` holds ``(suffix, labels, value)``: the suffix is ``_total`` for a counter's value,
    ``_bucket``/``_count``/``_sum`` for a histogram's, empty for a gauge's.
    """

    name: str
    type: str  # "gauge", "counter" or "histogram"
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str | None = None) -> None:
        if suffix is None:
            suffix = "_total" if self.type == "counter" else ""
        self.samples.append((suffix, labels, value))

    def add_histogram(
        self, labels: dict[str, str], buckets: Iterable[tuple[float, int]], count: int, total: float
    ) -> None:
        for bound, cumulative in buckets:
            self.samples.append(("_bucket", {**labels, "le": _number(bound)}, cumulative))
        self.samples.append(("_count", labels, count))
        self.samples.append(("_sum", labels, total))


def _number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def openmetrics(families: Iterable[Family]) -> str:
    """The OpenMetrics text exposition of ``families``, ``# EOF`` included."""
    out: list[str] = []
    for fam in families:
        out.append(f"# TYPE {fam.name} {fam.type}")
        out.append(f"# HELP {fam.name} {_escape(fam.help)}")
        for suffix, labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(
                f"{fam.name}{suffix}{{{text}}} {_number(value)}"
                if text
                else f"{fam.name}{suffix} {_number(value)}"
            )
    out.append("# EOF")
    return "\n".join(out) + "\n"


def to_prometheus(families: Iterable[Family]) -> list[Any]:
    """``families`` as ``prometheus_client`` metric families (for a custom collector)."""
    from prometheus_client.metrics_core import Metric

    result = []
    for fam in families:
        metric = Metric(fam.name, fam.help, fam.type)
        for suffix, labels, value in fam.samples:
            metric.add_sample(fam.name + suffix, labels, float(value))
        result.append(metric)
    return result
