import pytest
import torch

from leukostage.model import ColourNormalise, ModelConfig, build_model, count_trainable


def test_trainable_parameters_match_table_4():
    assert count_trainable(build_model()) == 5_401_188
    assert count_trainable(build_model(ModelConfig(colour_norm=True))) == 5_401_188  # normalisation adds none


def test_output_shape_after_each_block():
    model = build_model().eval()
    x = torch.rand(2, 3, 128, 128)
    expected = [(2, 32, 64, 64), (2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    for block, shape in zip(model.blocks, expected):
        x = block(x)
        assert tuple(x.shape) == shape
    assert tuple(model.forward_head(x).shape) == (2, 4)


def test_block_layout_is_table_4():
    block = build_model().blocks[0]
    names = [type(m).__name__ for m in block]
    assert names == ["Conv2d", "ReLU", "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d", "Dropout"]
    assert block[-1].p == 0.25
    head = [type(m).__name__ for m in build_model().head]
    assert head == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]


def test_forward_is_features_then_head():
    model = build_model().eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x)))


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match="expected one of paper"):
        build_model(ModelConfig(arch="resnet9000"))


def test_forward_maps_are_the_last_conv_layer_before_pooling():
    model = build_model().eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        maps, pooled = model.forward_maps(x)
        assert tuple(maps.shape) == (2, 256, 16, 16) and tuple(pooled.shape) == (2, 256, 8, 8)
        assert torch.equal(pooled, model.forward_features(x))
        assert torch.equal(pooled, torch.nn.functional.max_pool2d(maps, 2))


def test_colour_normalised_model_ignores_per_channel_gains():
    """A white-balance or lamp change multiplies each channel: the normalised model must not see it."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 128, 128) * 0.8
    gains = torch.tensor([0.8, 1.15, 0.9])[None, :, None, None]
    normalised, plain = build_model(ModelConfig(colour_norm=True)).eval(), build_model().eval()
    with torch.no_grad():
        for model, changed in ((normalised, False), (plain, True)):
            a, b = model.forward_features(x), model.forward_features(x * gains)
            assert bool((a - b).abs().max() > 1e-3 * a.abs().max()) is changed


def test_colour_normalise_puts_the_background_level_on_neutral_grey():
    x = torch.zeros(1, 3, 20, 20)
    x[:, :, :, :] = torch.tensor([0.8, 0.6, 0.7])[:, None, None]  # tinted slide
    x[:, :, :5, :5] = 0.1  # a dark cell
    out = ColourNormalise(image_size=20, quantile=0.9, level=0.9)(x)
    assert torch.allclose(out[0, :, 10, 10], torch.full((3,), 0.9))
    assert torch.allclose(out[0, :, 0, 0], 0.1 * 0.9 / torch.tensor([0.8, 0.6, 0.7]))
