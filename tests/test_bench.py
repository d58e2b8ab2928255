"""The benchmark's summary lines (pure formatting of measured results)."""
from benchmarks.bench import format_audit


def test_prepare_ratio_is_given_round_by_round_with_its_spread():
    results = {"prepare": {"seconds": 2.0, "rounds": [2.0, 3.0, 2.5]},
               "keras_read": {"seconds": 3.0, "rounds": [3.0, 3.0, 5.0]}}
    lines = format_audit(results)
    assert "1.50x as fast, fastest runs" in lines[0]
    assert lines[1].strip() == "the same, round by round: median 1.50x, mean 1.50x +- 0.50 over 3 rounds (1.50, 1.00, 2.00)"


def test_one_round_gives_no_spread():
    results = {"prepare": {"seconds": 2.0, "rounds": [2.0]}, "keras_read": {"seconds": 3.0, "rounds": [3.0]}}
    assert len(format_audit(results)) == 1
