"""The fidelity figures beyond bench.report's agreement: margins and flips."""

from __future__ import annotations

import pytest

from bench.fidelity import flip_margins, top_margin
from bench.report import agreement


def test_the_margin_is_the_mean_gap_between_the_two_best_labels() -> None:
    scores = [{"a": 0.9, "b": 0.1, "c": 0.5}, {"a": 0.3, "b": 0.3, "c": 0.2}]
    assert top_margin(scores) == pytest.approx((0.4 + 0.0) / 2)
    with pytest.raises(ValueError, match="two labels"):
        top_margin([{"a": 1.0}])


def test_each_flip_of_the_top_label_reports_how_close_float32_was() -> None:
    reference = [{"a": 0.9, "b": 0.1}, {"a": 0.52, "b": 0.48}, {"a": 0.2, "b": 0.7}]
    other = [{"a": 0.8, "b": 0.2}, {"a": 0.49, "b": 0.51}, {"a": 0.2, "b": 0.7}]
    assert flip_margins(reference, other) == [pytest.approx(0.04)]


def test_a_tie_goes_to_the_first_label_in_sorted_order_as_in_the_agreement() -> None:
    reference = [{"b": 0.6, "a": 0.4}, {"b": 0.4, "a": 0.6}]
    tied = [{"b": 0.5, "a": 0.5}, {"b": 0.5, "a": 0.5}]
    assert flip_margins(reference, tied) == [pytest.approx(0.2)]
    assert agreement("tied", reference, tied).top_label == 0.5
