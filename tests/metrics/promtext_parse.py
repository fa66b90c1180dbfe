"""A small, independent parser of Prometheus text format 0.0.4 for assertions in tests."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _unescape(value: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """(families: name -> (type, help), samples: [(name, labels, value)])."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, list[str]] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, ["", ""])[1] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            families.setdefault(name, ["", ""])[0] = kind
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, f"unparsable sample line: {line!r}"
            name, label_text, value = m.groups()
            labels = {}
            if label_text:
                pos = 0
                while pos < len(label_text):
                    lm = _LABEL.match(label_text, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels[lm.group(1)] = _unescape(lm.group(2))
                    pos = lm.end()
            samples.append((name, labels, float(value)))
    return {k: (v[0], v[1]) for k, v in families.items()}, samples


def value(samples, metric: str, /, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for n, lb, v in samples
             if n == metric and all(lb.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"expected one sample {metric}{labels}, found {len(found)}"
    return found[0]


def total(samples, metric: str, /, **labels: str) -> float:
    return sum(v for n, lb, v in samples
               if n == metric and all(lb.get(k) == w for k, w in labels.items()))
