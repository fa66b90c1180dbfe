"""Prometheus text format 0.0.4: the renderer's output rules."""

from __future__ import annotations

import math

import pytest

from corral.metrics import exposition as ex
from promtext_parse import parse, value


def test_help_and_type_precede_samples_and_text_ends_with_newline():
    text = ex.render([ex.counter("a_total", "Things.").add(3), ex.gauge("b", "B.").add(1.5)])
    assert text == ("# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n"
                    "# HELP b B.\n# TYPE b gauge\nb 1.5\n")


def test_label_values_are_escaped_and_round_trip():
    nasty = 'unix:/run/a "b"\\c\nd'
    text = ex.render([ex.gauge("g", "G.").add(1, {"address": nasty, "name": "http"})])
    assert 'address="unix:/run/a \\"b\\"\\\\c\\nd"' in text
    assert "\n" not in text.splitlines()[2]
    _, samples = parse(text)
    assert samples == [("g", {"address": nasty, "name": "http"}, 1.0)]


def test_help_text_escapes_backslash_and_newline():
    text = ex.render([ex.gauge("g", "two\nlines \\ here")])
    assert "# HELP g two\\nlines \\\\ here\n" in text


@pytest.mark.parametrize("raw,expected", [
    (0, "0"), (7, "7"), (True, "1"), (False, "0"), (2.0, "2"), (0.25, "0.25"),
    (1e-7, "1e-07"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN"),
    (12345678901234567890, "12345678901234567890"),
])
def test_values(raw, expected):
    assert ex.format_value(raw) == expected


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    h = ex.Histogram(bounds=(0.1, 0.5, 1.0), counts=[4, 3, 2, 1], sum=7.25)
    text = ex.render([ex.histogram("d_seconds", "D.").add(h, {"outcome": "ok"})])
    families, samples = parse(text)
    assert families == {"d_seconds": ("histogram", "D.")}
    buckets = [(lb["le"], v) for n, lb, v in samples if n == "d_seconds_bucket"]
    assert buckets == [("0.1", 4), ("0.5", 7), ("1", 9), ("+Inf", 10)]
    assert all(lb["outcome"] == "ok" for n, lb, _ in samples)
    assert value(samples, "d_seconds_count") == 10
    assert value(samples, "d_seconds_sum") == 7.25


def test_empty_families_still_have_help_and_type():
    text = ex.render([ex.histogram("h_seconds", "H.")])
    assert text == "# HELP h_seconds H.\n# TYPE h_seconds histogram\n"


@pytest.mark.parametrize("make,message", [
    (lambda: ex.counter("requests", "x"), "must end in _total"),
    (lambda: ex.gauge("open_total", "x"), "must not end in _total"),
    (lambda: ex.gauge("9bad", "x"), "invalid metric name"),
    (lambda: ex.Family("x", "summary", "x"), "not one of"),
    (lambda: ex.gauge("g", "x").add(1, {"bad-name": "v"}), "invalid label name"),
    (lambda: ex.gauge("g", "x").add(1, {"__reserved": "v"}), "invalid label name"),
    (lambda: ex.histogram("h", "x").add(ex.Histogram((1.0,), [0, 0], 0), {"le": "1"}), "reserved"),
    (lambda: ex.Histogram((1.0, 0.5), [0, 0, 0], 0), "increase strictly"),
    (lambda: ex.Histogram((1.0, math.inf), [0, 0, 0], 0), "finite"),
    (lambda: ex.Histogram((1.0,), [0], 0), "one count per bound"),
])
def test_invalid_input_is_refused_with_a_reason(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_type_mismatch_between_family_and_sample():
    with pytest.raises(TypeError):
        ex.histogram("h", "x").add(1)
    with pytest.raises(TypeError):
        ex.gauge("g", "x").add(ex.Histogram((1.0,), [0, 0], 0))


def test_a_family_may_not_be_rendered_twice():
    with pytest.raises(ValueError, match="rendered twice"):
        ex.render([ex.gauge("g", "x"), ex.gauge("g", "y")])
