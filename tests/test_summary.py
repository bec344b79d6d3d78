"""The summary statistics that evaluation, the demos and the benchmark report."""

import math

import numpy as np
import pytest
import torch

from surfsep.evaluate import summarise


def test_summary_skips_non_finite_values():
    summary = summarise([1.0, 2.0, 3.0, 6.0, math.nan, math.inf])
    assert summary["count"] == 4
    assert summary["mean"] == 3.0
    assert summary["median"] == 2.5
    assert summary["std"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    half = 1.96 * summary["std"] / 2
    assert summary["ci95"] == pytest.approx([3.0 - half, 3.0 + half])


def test_tensor_and_list_summaries_match():
    values = [14.5, 20.25, 17.0]
    assert summarise(torch.tensor(values, dtype=torch.float64)) == summarise(values)


@pytest.mark.parametrize("values,expected", [
    ([], {"mean": None, "median": None, "std": None, "ci95": None, "count": 0}),
    ([math.nan], {"mean": None, "median": None, "std": None, "ci95": None, "count": 0}),
    ([7.5], {"mean": 7.5, "median": 7.5, "std": None, "ci95": None, "count": 1}),
])
def test_too_few_values_give_no_interval(values, expected):
    assert summarise(values) == expected
