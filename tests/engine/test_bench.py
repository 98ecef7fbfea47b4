import pytest

from workbench.engine.timing import interleaved_timings


def test_interleaved_order_and_ratio():
    calls = []
    table = interleaved_timings({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up round, then strictly alternating
    assert list(table["name"]) == ["a", "b"]
    assert table.loc[0, "ratio"] == 1.0
    assert table.loc[1, "ratio"] == pytest.approx(table.loc[1, "median_ms"] / table.loc[0, "median_ms"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="nothing to time"):
        interleaved_timings({})
    with pytest.raises(ValueError, match="repeats"):
        interleaved_timings({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        interleaved_timings({"a": lambda: None}, warmup=-1)
