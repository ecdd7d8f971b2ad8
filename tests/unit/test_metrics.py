"""Unit tests for fusionrank.evaluation: numpy reference metrics by hand, the Spark
versions against the reference, the popularity baseline and the relevant sets."""

from __future__ import annotations

import math

import pytest

from fusionrank.metrics.measures import (
    average_precision_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)


# -- reference metrics, by hand ------------------------------------------------------------
def test_reference_metrics_worked_example():
    # recommended [a, b, c, d], relevant {b, d, e}, k = 4: hits at ranks 2 and 4.
    recommended, relevant, k = ["a", "b", "c", "d"], {"b", "d", "e"}, 4
    # P = 2 hits / 4 = 0.5
    assert precision_at_k(recommended, relevant, k) == pytest.approx(0.5)
    # R = 2 hits / 3 relevant = 2/3
    assert recall_at_k(recommended, relevant, k) == pytest.approx(2 / 3)
    # DCG = 1/log2(3) + 1/log2(5); ideal (min(3, 4) = 3 hits at ranks 1..3) = 1 + 1/log2(3) + 1/log2(4)
    expected_ndcg = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx(expected_ndcg)
    assert expected_ndcg == pytest.approx(0.4982, abs=1e-4)
    # AP = (P@2 + P@4) / min(3, 4) = (1/2 + 2/4) / 3 = 1/3
    assert average_precision_at_k(recommended, relevant, k) == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_reference_metrics_cutoff_below_list_length():
    # recommended [x, a, b, c], relevant {a, b, c}, k = 2: only rank 2 (a) counts.
    recommended, relevant, k = ["x", "a", "b", "c"], {"a", "b", "c"}, 2
    assert precision_at_k(recommended, relevant, k) == pytest.approx(1 / 2)  # 1 hit / 2
    assert recall_at_k(recommended, relevant, k) == pytest.approx(1 / 3)  # 1 hit / 3 relevant
    # DCG = 1/log2(3); ideal = 1 + 1/log2(3) (min(R, k) = 2)
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # AP = (1/2) / min(3, 2) = 1/4
    assert average_precision_at_k(recommended, relevant, k) == pytest.approx(0.25)


def test_reference_metrics_perfect_ranking():
    recommended, relevant = ["a", "b", "c"], {"a", "b", "c"}
    assert precision_at_k(recommended, relevant, 3) == 1.0
    assert recall_at_k(recommended, relevant, 3) == 1.0
    assert ndcg_at_k(recommended, relevant, 3) == pytest.approx(1.0)
    assert average_precision_at_k(recommended, relevant, 3) == pytest.approx(1.0)


def test_reference_metrics_no_hits():
    recommended, relevant = ["a", "b", "c"], {"x", "y"}
    for metric in (precision_at_k, recall_at_k, ndcg_at_k, average_precision_at_k):
        assert metric(recommended, relevant, 3) == 0.0


def test_reference_metrics_empty_relevant_is_zero():
    for metric in (precision_at_k, recall_at_k, ndcg_at_k, average_precision_at_k):
        assert metric(["a", "b"], set(), 2) == 0.0


def test_reference_metrics_empty_recommendations_is_zero():
    for metric in (precision_at_k, recall_at_k, ndcg_at_k, average_precision_at_k):
        assert metric([], {"a"}, 5) == 0.0


def test_reference_metrics_k_larger_than_list():
    # recommended [a, b], relevant {a}, k = 5
    recommended, relevant, k = ["a", "b"], {"a"}, 5
    assert precision_at_k(recommended, relevant, k) == pytest.approx(1 / 5)  # missing slots count as misses
    assert recall_at_k(recommended, relevant, k) == 1.0
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx(1.0)  # 1/log2(2) / 1
    assert average_precision_at_k(recommended, relevant, k) == pytest.approx(1.0)  # (1/1) / min(1, 5)


