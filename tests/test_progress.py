"""``otdiff.progress.Progress``: the opening line with the expected duration, the count, errors."""

import io

import pytest

from otdiff.progress import Progress, describe_seconds


def test_opening_line_states_the_expected_duration_and_the_bar_counts():
    stream = io.StringIO()
    with Progress(
        10, "work", unit="step", expected_seconds=125, basis="measured", file=stream
    ) as p:
        p(4, loss=0.5)
        p.advance(6)
        assert p.done == 10
    text = stream.getvalue()
    assert text.startswith("work: 10 steps, expected about 2.1 min (measured).")
    assert "10/10" in text


def test_unknown_duration_and_overshoot():
    stream = io.StringIO()
    with Progress(3, "work", file=stream) as p:
        p(99)  # never past the total
        assert p.done == 3
    assert "not known yet" in stream.getvalue()


@pytest.mark.parametrize("total", [0, -1, 2.5, True, "3"])
def test_bad_total(total):
    with pytest.raises(ValueError, match="total must be an int >= 1"):
        Progress(total, "work", file=io.StringIO())


def test_describe_seconds():
    assert [describe_seconds(s) for s in (40, 210, 7200)] == ["40 s", "3.5 min", "2.0 h"]
