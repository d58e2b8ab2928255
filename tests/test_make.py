"""The Makefile as a user drives it: `make prepare DATA=x && make train && make evaluate` works on x without
saying DATA= again (each stage says which run it uses), and MNIST is never picked silently."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SHADES, shade_image, write_image

pytestmark = pytest.mark.slow  # real make, real training (tiny)


def make(cwd, *targets, **variables):
    """``make TARGETS VAR=value ...`` with the repository's Makefile, in ``cwd``, with this interpreter."""
    args = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), f"PY={sys.executable}", "STAMP=",
            *targets, *(f"{k}={v}" for k, v in variables.items())]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_prepare_then_train_then_evaluate_without_data_again(tmp_path):
    rng = np.random.default_rng(0)
    for label in SHADES:
        for i in range(12):
            write_image(tmp_path / "my photos" / label / f"{i}.png", shade_image(label, rng))
    (tmp_path / "p.toml").write_text("[train]\nbatch_size = 8\n")
    res = make(tmp_path, "prepare", DATA="my photos", PARAMS="p.toml")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "my photos"
    assert (run / "prepare.json").is_file()
    for target in ("train", "evaluate"):
        res = make(tmp_path, target, PARAMS="p.toml")
        assert res.returncode == 0, (target, res.stderr[-3000:])
        assert f"using {run.relative_to(tmp_path)}, the last prepared run" in res.stderr, target
    assert (run / "metrics.json").is_file() and (run / "report.html").is_file()
    res = make(tmp_path, "prepare", PARAMS="p.toml")  # the retrain after a review: the run's own data again
    assert res.returncode == 0 and "my photos again" in res.stderr and "up to date" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "runs" / "mnist").exists()
    # a mapping file called labels.csv names its run after its folder
    (tmp_path / "shop").mkdir()
    for i, label in enumerate(sorted(SHADES) * 4):
        write_image(tmp_path / "shop" / "img" / f"{i}.png", shade_image(label, rng))
    (tmp_path / "shop" / "labels.csv").write_text(
        "path,label\n" + "".join(f"img/{i}.png,{label}\n" for i, label in enumerate(sorted(SHADES) * 4)))
    res = make(tmp_path, "prepare", DATA="shop/labels.csv", PARAMS="p.toml")
    assert res.returncode == 0 and (tmp_path / "runs" / "shop" / "prepare.json").is_file(), res.stderr[-2000:]
    assert "runs/shop" in (tmp_path / "runs" / ".last-run").read_text()


def test_a_stage_before_any_prepare_says_what_to_do(tmp_path):
    res = make(tmp_path, "train")
    assert res.returncode != 0 and "make prepare DATA=" in res.stderr and "Traceback" not in res.stderr
