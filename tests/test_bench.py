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


def test_the_audits_share_is_prepare_against_prepare_with_the_audit_blanked():
    results = {"prepare": {"seconds": 2.0, "rounds": [2.0, 3.0, 2.5]},
               "prepare_unaudited": {"seconds": 1.0, "rounds": [1.0, 1.5, 2.0]},
               "keras_read": {"seconds": 3.0, "rounds": [3.0, 3.0, 5.0]}}
    assert format_audit(results)[2] == ("prepare with the audit's per-image checks and copy search blanked: median 2.50x "
                                        "as fast as the Keras pass; the audit costs 1.00 s of prepare's median 2.50 s")


def test_the_blanked_step_blanks_the_signatures_and_statistics_of_its_own_process(tmp_path, monkeypatch):
    import numpy as np

    from benchmarks import bench
    from pipeline.data import quality, similar

    seen = {}
    monkeypatch.setattr(similar, "signatures", similar.signatures)  # put back after the test
    monkeypatch.setattr(quality, "image_stats", quality.image_stats)
    monkeypatch.setattr(bench, "_prepare_run", lambda data, run: seen.update(
        sig=similar.signatures([np.zeros((9, 9), np.uint8)] * 3), stats=quality.image_stats([np.zeros((9, 9))], [])))
    bench.step_prepare_unaudited(tmp_path, tmp_path)
    hashes, thumbs, negative = seen["sig"]
    assert len(set(hashes.tolist())) == 3 and not thumbs.any() and thumbs.shape == (3, 256) and not negative.any()
    assert (seen["stats"] == quality.NONE).all()
