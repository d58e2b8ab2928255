import pytest

from pipeline.model import build_model


def test_lenet5_layers_and_parameter_count():
    model = build_model("lenet5", (28, 28, 1), 10)
    convs = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    dense = [l for l in model.layers if l.__class__.__name__ == "Dense"]
    assert [(c.filters, c.kernel_size) for c in convs] == [(6, (5, 5)), (16, (5, 5))]
    assert [d.units for d in dense] == [120, 84, 10]
    # 156 + 2416 + 48120 + 10164 + 850: the classic LeNet-5 size
    assert model.count_params() == 61706
    assert model.output_shape == (None, 10)
    assert not any(l.__class__.__name__ == "Lambda" for l in model.layers)


def test_other_shapes_and_errors():
    assert build_model("lenet5", (32, 40, 3), 3).output_shape == (None, 3)
    with pytest.raises(ValueError, match="at least 12x12"):
        build_model("lenet5", (8, 8, 1), 2)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg", (28, 28, 1), 2)


@pytest.mark.parametrize("name, params, layers", [
    ("softmax", 7850, ["Flatten", "Dense"]),                      # 784 * 10 + 10
    ("mlp", 407050, ["Flatten", "Dense", "Dropout", "Dense"]),    # 784 * 512 + 512 + 512 * 10 + 10
    ("cnn", 3274634, ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dropout", "Dense"]),
])
def test_comparison_models(name, params, layers, tmp_path):
    import keras

    model = build_model(name, (28, 28, 1), 10, 0.5)
    assert [layer.__class__.__name__ for layer in model.layers] == layers
    assert model.count_params() == params and model.output_shape == (None, 10)
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras", safe_mode=True).count_params() == params
