import pytest
import torch

from leukostage.model import ModelConfig, build_model, count_trainable


def test_trainable_parameters_match_table_4():
    assert count_trainable(build_model()) == 5_401_188


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
