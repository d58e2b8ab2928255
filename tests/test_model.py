import pytest

from pipeline.model.model import (C1, C3, HEAD_LAYERS, build_model, first_pool, precision_of, second_pool, set_temperature,
                                  temperature, with_precision)

HEAD = ["Dense", "Rescaling", "Activation"]  # logits -> temperature -> softmax


def test_lenet5_layers_and_parameter_count():
    model = build_model("lenet5", (28, 28, 1), 10)
    convs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    dense = [l for l in model.layers if l.__class__.__name__ == "Dense"]
    assert [(c.filters, c.kernel_size) for c in convs] == [(8, (5, 5)), (24, (5, 5))]
    assert [d.units for d in dense] == [120, 84, 10]
    assert [l.name for l in model.layers if l.__class__.__name__ == "BatchNormalization"] == ["s2_bn", "s4_bn"]
    # c1, c3 without biases (a batch norm follows each: 4 numbers a map), then dense 120 -> 84 -> 10
    side = (28 // first_pool((28, 28))[0] - 4) // second_pool((28, 28))[0]  # after s2, the 5x5 valid c3, s4
    flat = side * side * C3
    expected = 25 * C1 + 4 * C1 + 25 * C1 * C3 + 4 * C3 + (flat * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert model.count_params() == expected < 100_000
    assert model.output_shape == (None, 10)
    assert not any(l.__class__.__name__ == "Lambda" for l in model.layers)


def test_lenet5_classic_is_the_1998_network():
    model = build_model("lenet5-classic", (28, 28, 1), 10)
    assert [l.__class__.__name__ for l in model.layers] == [
        "Conv2D", "AveragePooling2D", "Conv2D", "AveragePooling2D", "Flatten", "Dense", "Dense", *HEAD]
    assert model.get_layer("c1").activation.__name__ == "tanh"
    # 6@5x5 and 16@5x5 with biases, 16 maps of 5x5 into 120 -> 84 -> 10: the 1998 network's size
    assert model.count_params() == (25 * 6 + 6) + (25 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)


@pytest.mark.parametrize("side, pool, pool2", [(28, 2, 2), (32, 2, 3), (40, 3, 2), (48, 3, 3), (64, 5, 2)])
def test_lenet5_adapts_to_the_input_size_within_100k_parameters(side, pool, pool2):
    assert first_pool((side, side, 1)) == (pool, pool) and second_pool((side, side, 1)) == (pool2, pool2)
    for name in ("lenet5", "lenet5-classic"):
        for channels in (1, 3):
            model = build_model(name, (side, side, channels), 26)
            assert model.output_shape == (None, 26) and model.count_params() < 100_000
            assert model.get_layer("flatten").output.shape[1] <= 25 * 24  # at most 5 x 5 maps


def test_other_shapes_and_errors():
    assert build_model("lenet5", (32, 40, 3), 3).output_shape == (None, 3)
    with pytest.raises(ValueError, match="at least 12x12"):
        build_model("lenet5", (8, 8, 1), 2)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", (28, 28, 1), 2)


@pytest.mark.parametrize("name, params, layers", [
    ("softmax", 7850, ["Flatten", *HEAD]),                      # 784 * 10 + 10
    ("mlp", 407050, ["Flatten", "Dense", "Dropout", *HEAD]),    # 784 * 512 + 512 + 512 * 10 + 10
    ("cnn", 3274634, ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", *HEAD]),
])
def test_comparison_models(name, params, layers, tmp_path):
    import keras

    model = build_model(name, (28, 28, 1), 10, 0.5)
    assert [layer.__class__.__name__ for layer in model.layers] == layers
    assert model.count_params() == params and model.output_shape == (None, 10)
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras", safe_mode=True).count_params() == params


def test_temperature_divides_the_logits_and_survives_saving(tmp_path):
    import keras
    import numpy as np

    model = build_model("softmax", (28, 28, 1), 3)
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    logits = keras.Model(model.inputs, model.get_layer("logits").output)(x).numpy()
    set_temperature(model, 2.0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5)
    assert temperature(loaded) == pytest.approx(2.0)


def test_precision_copies_keep_the_weights_and_a_float32_head():
    import numpy as np

    model = build_model("lenet5", (28, 28, 1), 4)
    half = with_precision(model, "bfloat16")
    assert precision_of(model) == "float32" and precision_of(half) == "bfloat16"
    assert {layer.dtype_policy.name for layer in half.layers if layer.name in HEAD_LAYERS} == {"float32"}
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    assert half(x).dtype.name == "float32"
    back = with_precision(half, "float32")
    assert precision_of(back) == "float32"
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(back(x).numpy(), model(x).numpy(), rtol=1e-6)
