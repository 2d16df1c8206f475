"""``otdiff.exercise.check``: agreement, "not attempted yet", and messages that say what differs."""

import numpy as np
import pytest

from otdiff import exercise


def _double(x):
    return 2 * x


def test_agreement_and_not_attempted(capsys):
    x = np.arange(6.0).reshape(2, 3)
    assert exercise.check("ex", _double, _double, x) is True
    assert "correct" in capsys.readouterr().out

    def stub(x):
        raise NotImplementedError

    assert exercise.check("ex", stub, _double, x) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_wrong_values_name_the_largest_error():
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(
        AssertionError, match=r"ex: differs from the library by up to 5.*index \(1, 2\)"
    ):
        exercise.check("ex", lambda v: 3 * v, _double, x)


def test_structure_shape_nan_and_errors_are_explained():
    x = np.ones(3)
    with pytest.raises(AssertionError, match="shape"):
        exercise.check("ex", lambda v: v[:2], _double, x)
    with pytest.raises(AssertionError, match="returns 2 array"):
        exercise.check("ex", lambda v: (v, v), _double, x)
    with pytest.raises(AssertionError, match="NaN"):
        exercise.check("ex", lambda v: v * np.nan, _double, x)
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        exercise.check("ex", lambda v: 1 / 0, _double, x)
    with pytest.raises(ValueError, match="rtol"):
        exercise.check("ex", _double, _double, x, rtol=-1.0)


def test_tuples_and_dicts_compare_leaf_by_leaf():
    x = np.ones(2)
    pair = lambda v: {"a": v, "b": (v, 2 * v)}  # noqa: E731
    assert exercise.check("ex", pair, pair, x)
