"""A quiet console: TensorFlow's C++ start-up lines stay off stderr, also after a check whether it is installed."""
import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="the full install only")


def test_tensorflow_start_up_lines_stay_off_the_console_after_an_installed_check():
    code = ("from pipeline.shared import quiet; quiet.install()\n"
            "import importlib.util; assert importlib.util.find_spec('tensorflow') is not None\n"  # as bundle does
            "import tensorflow as tf; print(float(tf.constant(1.0) + 1))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert res.returncode == 0 and res.stdout.strip() == "2.0", res.stderr[-2000:]
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert noise not in res.stderr, res.stderr[-2000:]


def test_tensorflow_log_lines_that_name_its_temporary_folders_are_dropped_and_the_rest_pass(caplog):
    import logging

    from pipeline.shared import quiet

    quiet.install()
    tf_log = logging.getLogger("tensorflow")
    with caplog.at_level(logging.INFO, logger="tensorflow"):
        tf_log.info("Assets written to: %s", "/tmp/.x.tmp-abc/saved_model/assets")
        tf_log.warning("5 out of the last 5 calls triggered tf.function retracing")
        tf_log.warning("a warning a user should see")
    assert [r.getMessage() for r in caplog.records] == ["a warning a user should see"]
    assert not logging.getLogger("python_multipart").isEnabledFor(logging.WARNING)  # serve's 400 says it
