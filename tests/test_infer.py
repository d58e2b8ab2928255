"""One inference path, two runtimes: TensorFlow and ONNX Runtime give the same labels, probabilities and
``familiar``, because only the model call differs (the novelty score is the same numpy code)."""
import numpy as np
import pytest

from pipeline.model.infer import Output, Predictor, agreement
from pipeline.shared import bundle

from conftest import SHADES, shade_image


def _both(model_dir, x, batch_size=64):
    """The same images through the bundle in each runtime."""
    return [Predictor(bundle.load(model_dir, runtime), batch_size)(x) for runtime in (bundle.TENSORFLOW, bundle.ONNX)]


def test_the_runtimes_agree_on_every_output(shade_bundle):
    rng = np.random.default_rng(0)
    cfg = bundle.load(shade_bundle, bundle.ONNX).preprocess
    from pipeline.data.preprocess import preprocess

    x = np.stack([preprocess(shade_image(label, rng), cfg) for label in SHADES for _ in range(10)]
                 + [preprocess((rng.random((20, 20)) * 255).astype(np.uint8), cfg) for _ in range(5)])
    tf, ort = _both(shade_bundle, x)
    np.testing.assert_allclose(ort.probs, tf.probs, atol=1e-4)
    np.testing.assert_allclose(ort.logits, tf.logits, atol=1e-3)
    np.testing.assert_allclose(ort.features, tf.features, atol=1e-3)
    assert (ort.probs.argmax(1) == tf.probs.argmax(1)).all() and (ort.familiar == tf.familiar).all()
    # (the novelty scores themselves may differ more: a model fitted on 54 near-identical images has steep
    # quantile tables, which turn the runtimes' 1e-5 differences of the raw scores into hundredths)
    assert not ort.familiar[-5:].any()  # the noise, in both
    a = agreement(ort, tf)
    assert a["top1"] == a["familiar"] == 1.0 and a["max_abs_prob_diff"] < 1e-4 and a["images"] == len(x)


def test_an_image_gets_the_same_answer_in_any_batch(shade_bundle):
    rng = np.random.default_rng(1)
    from pipeline.data.preprocess import preprocess

    cfg = bundle.load(shade_bundle, bundle.ONNX).preprocess
    x = np.stack([preprocess(shade_image(label, rng), cfg) for label in SHADES for _ in range(7)])
    for runtime in (bundle.TENSORFLOW, bundle.ONNX):
        p = Predictor(bundle.load(shade_bundle, runtime), 8)
        whole, alone = p(x), [p(x[i:i + 1]) for i in range(len(x))]
        resumed = [p(x[i:i + 16]) for i in range(0, len(x), 16)]  # starts at batch boundaries, as --resume does
        np.testing.assert_array_equal(np.concatenate([o.probs for o in resumed]), whole.probs)
        np.testing.assert_array_equal(np.concatenate([o.novelty for o in resumed]), whole.novelty)
        # alone, each image is first in its batch: bit for bit in ONNX Runtime; TensorFlow on an AVX2 CPU
        # differs in the 8th digit for an image that was last in its batch of 8 (its novelty score, from
        # steep quantile tables fitted on 54 near-identical images, in the 3rd)
        probs, novelty = (np.concatenate([o.probs for o in alone]), np.concatenate([o.novelty for o in alone]))
        if runtime == bundle.ONNX:
            np.testing.assert_array_equal(probs, whole.probs)
            np.testing.assert_array_equal(novelty, whole.novelty)
        else:
            np.testing.assert_allclose(probs, whole.probs, rtol=0, atol=1e-6)
            np.testing.assert_allclose(novelty, whole.novelty, rtol=1e-2)


def test_output_take_slices_every_field():
    out = Output(np.arange(8.0).reshape(4, 2), np.zeros((4, 2)), None, np.arange(4.0), np.array([1, 0, 1, 0], bool))
    part = out.take(1, 3)
    assert part.probs.tolist() == [[2, 3], [4, 5]] and part.features is None and part.conv is None
    assert part.novelty.tolist() == [1, 2] and part.familiar.tolist() == [False, True]


@pytest.mark.slow
def test_the_runtimes_agree_on_the_tiny_test_split(trained_run):
    """The tiny MNIST run's test split: the same top-1 and familiar on every image, probabilities within 1e-4."""
    run, _ = trained_run
    x = np.load(run / "X_test.npy")
    tf, ort = _both(run / "model", x, 512)
    a = agreement(ort, tf)
    assert a["top1"] == 1.0 and a["familiar"] == 1.0 and a["max_abs_prob_diff"] < 1e-4, a


@pytest.mark.slow
def test_the_runtimes_agree_on_the_mnist_test_split(trained_run, mnist_dir):
    """The 10,000 MNIST test digits through the tiny run's bundle: top-1 on >= 99.95%, familiar on >= 99.5%,
    probabilities within 1e-4."""
    from pipeline.data import mnist
    from pipeline.data.preprocess import preprocess

    run, _ = trained_run
    images, _ = mnist.load_split(mnist_dir, "test")
    cfg = bundle.load(run / "model", bundle.ONNX).preprocess
    x = np.stack([preprocess(img, cfg) for img in images])
    tf, ort = _both(run / "model", x, 512)
    a = agreement(ort, tf)
    assert a["images"] == 10000 and a["top1"] >= 0.9995 and a["familiar"] >= 0.995, a
    assert a["max_abs_prob_diff"] < 1e-4, a


def test_pinning_blas_to_one_thread_holds_for_the_process_and_the_model_calls_skip_the_limit():
    """serve pins numpy's BLAS once; each model call then sets no limit of its own (a fresh process: the
    pin lasts as long as it does)."""
    import subprocess
    import sys

    code = ("import contextlib, threadpoolctl\n"
            "from pipeline.model import infer\n"
            "infer.pin_blas_thread(); infer.pin_blas_thread()\n"
            "blas = [i for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']\n"
            "assert blas and all(i['num_threads'] == 1 for i in blas), blas\n"
            "assert isinstance(infer._one_blas_thread(), contextlib.nullcontext)\n"
            "assert len(infer._PINNED) == 1\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
