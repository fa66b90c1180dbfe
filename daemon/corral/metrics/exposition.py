"""Prometheus text exposition format 0.0.4, rendered from plain data.

Only what corral needs: counters, gauges and histograms, each a family with HELP
and TYPE lines and samples with escaped label values. No client library: the
supervisor stays small and imports nothing outside the standard library.

Format reference: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CONTENT_TYPE",
    "Family",
    "Histogram",
    "counter",
    "format_value",
    "gauge",
    "histogram",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_TYPES = ("counter", "gauge", "histogram")

Labels = Mapping[str, str]


class Histogram:
    """One histogram series: per-bucket counts (not cumulative) and the sum of observations.

    ``counts`` has one entry per upper bound in ``bounds`` plus a last one for
    observations above the highest bound (the ``+Inf`` bucket's own share).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float], counts: Sequence[int], sum: float) -> None:
        self.bounds, self.counts, self.sum = bounds, counts, sum
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"histogram has {len(self.bounds)} bounds but {len(self.counts)} "
                             f"counts; expected one count per bound plus one for +Inf")
        if not all(a < b for a, b in itertools.pairwise(self.bounds)) or not all(
                math.isfinite(b) for b in self.bounds):
            raise ValueError(f"histogram bounds must be finite and increase strictly (+Inf is "
                             f"implied): {list(self.bounds)}")


class Family:
    """A metric family: one name, one type, one HELP text, any number of labelled samples."""

    __slots__ = ("name", "type", "help", "samples")

    def __init__(self, name: str, type: str, help: str) -> None:
        self.name, self.type, self.help = name, type, help
        self.samples: list[tuple[Labels, float | Histogram]] = []
        if self.type not in _TYPES:
            raise ValueError(f"metric {self.name}: type {self.type!r} is not one of {_TYPES}")
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"invalid metric name {self.name!r}: use [a-zA-Z_:][a-zA-Z0-9_:]*")
        # Prometheus' own conventions, checked here so that promtool never has to.
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")
        if self.type != "counter" and self.name.endswith("_total"):
            raise ValueError(f"{self.type} {self.name!r} must not end in _total (only counters do)")

    def add(self, value: float | Histogram, labels: Labels | None = None) -> Family:
        """Append one sample; returns the family so that calls chain."""
        labels = labels or {}
        for key in labels:
            if not _LABEL_NAME.match(key) or key.startswith("__"):
                raise ValueError(f"metric {self.name}: invalid label name {key!r}")
        if self.type == "histogram":
            if not isinstance(value, Histogram):
                raise TypeError(f"histogram {self.name} needs a Histogram sample, got {value!r}")
            if "le" in labels:
                raise ValueError(f"histogram {self.name}: label 'le' is reserved for buckets")
        elif isinstance(value, Histogram):
            raise TypeError(f"{self.type} {self.name} got a Histogram sample")
        self.samples.append((labels, value))
        return self


def counter(name: str, help: str) -> Family:
    return Family(name, "counter", help)


def gauge(name: str, help: str) -> Family:
    return Family(name, "gauge", help)


def histogram(name: str, help: str) -> Family:
    return Family(name, "histogram", help)


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: integers plain, +Inf/-Inf/NaN spelled out."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()]
    if extra is not None:
        items.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(items) + "}" if items else ""


def _render_histogram(out: list[str], name: str, labels: Labels, h: Histogram) -> None:
    cumulative = 0
    for bound, count in zip(h.bounds, h.counts[:-1], strict=True):  # the last count is +Inf's, below
        cumulative += count
        out.append(f"{name}_bucket{_label_text(labels, ('le', format_value(float(bound))))} "
                   f"{cumulative}")
    cumulative += h.counts[-1]
    out.append(f"{name}_bucket{_label_text(labels, ('le', '+Inf'))} {cumulative}")
    out.append(f"{name}_sum{_label_text(labels)} {format_value(float(h.sum))}")
    out.append(f"{name}_count{_label_text(labels)} {cumulative}")


def render(families: Iterable[Family]) -> str:
    """The text of one scrape. Each family name may appear only once."""
    out: list[str] = []
    seen: set[str] = set()
    for fam in families:
        if fam.name in seen:
            raise ValueError(f"metric family {fam.name} rendered twice; merge its samples")
        seen.add(fam.name)
        out.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            if isinstance(value, Histogram):
                _render_histogram(out, fam.name, labels, value)
            else:
                out.append(f"{fam.name}{_label_text(labels)} {format_value(value)}")
    out.append("")
    return "\n".join(out)
