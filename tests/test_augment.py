import torch

from leukostage.augment import (AugmentConfig, ColourConfig, augment_batch, background_colour,
                                random_affine_matrices, randomise_background)


def test_identity_config_leaves_images_unchanged():
    cfg = AugmentConfig(rotation_deg=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=False)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(augment_batch(x, cfg), x, atol=1e-5)


def test_matrices_stay_within_table_3_ranges():
    theta = random_affine_matrices(2000, AugmentConfig(), torch.Generator().manual_seed(0))
    assert theta.shape == (2000, 2, 3)
    assert theta[:, :, 2].abs().max() <= 0.4 + 1e-6  # shift 0.2 of the side = 0.4 in [-1, 1] units
    det = torch.det(theta[:, :, :2]).abs()
    assert det.min() > 0.8**2 * 0.97 and det.max() < 1.2**2 * 1.01  # zoom 0.8-1.2 (shear keeps area ~)
    flips = torch.det(theta[:, :, :2]) < 0
    assert 0.4 < flips.float().mean() < 0.6  # horizontal flip half the time


def test_nearest_fill_repeats_edge_pixels_instead_of_black():
    x = torch.ones(8, 3, 32, 32) * 0.7
    out = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert torch.allclose(out, x, atol=1e-5)  # a constant image stays constant: no black borders


def test_augmentation_is_random_per_image_and_seeded():
    x = torch.rand(1, 3, 32, 32).repeat(4, 1, 1, 1)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def _smear_like(n: int) -> torch.Tensor:
    x = torch.zeros(n, 3, 16, 16)
    x[:, 0], x[:, 1], x[:, 2] = 0.75, 0.70, 0.72  # a pink-tinted bright background ...
    x[:, :, 4:8, 4:8] = torch.tensor([0.5, 0.2, 0.6])[:, None, None]  # ... and one dark purple cell
    return x


def test_background_colour_ignores_the_dark_cells():
    assert torch.allclose(background_colour(_smear_like(2), 0.6), torch.tensor([[0.75, 0.70, 0.72]] * 2))


def test_background_randomisation_moves_background_to_random_near_neutral_targets():
    x = _smear_like(64)
    cfg = ColourConfig(brightness=(0.6, 0.8), apply_p=1.0)  # targets below 1: no clipping
    out = randomise_background(x, cfg, torch.Generator().manual_seed(0))
    bg = out[:, :, 0, 0]
    spread = bg.max(1).values / bg.min(1).values
    assert spread.max() <= (1 + cfg.tint) / (1 - cfg.tint) + 1e-4  # near-neutral backgrounds
    assert bg.std(0).mean() > 0.02  # and different from image to image
    # cells keep their colour relationships: same per-channel gain as the background
    assert torch.allclose(out[:, :, 5, 5] / x[:, :, 5, 5], bg / x[:, :, 0, 0], atol=1e-4)


def test_background_randomisation_can_be_switched_off_per_image():
    x = _smear_like(8)
    assert torch.equal(randomise_background(x, ColourConfig(apply_p=0.0)), x)
