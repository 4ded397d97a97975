"""Rank agreement between a proxy's scores and those of what it stands for."""

import pytest

from search.fidelity import kendall_tau


def test_the_same_order_reversed_and_unrelated():
    assert kendall_tau([0.1, 0.5, 0.9], [10, 20, 30]) == 1.0
    assert kendall_tau([0.1, 0.5, 0.9], [30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)  # one of six pairs swapped


def test_ties_count_as_neither():
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)


def test_too_few_or_mismatched():
    assert kendall_tau([0.5], [0.7]) is None
    with pytest.raises(ValueError, match="3 and 2"):
        kendall_tau([1, 2, 3], [1, 2])
