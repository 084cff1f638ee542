import torch

from leukostage.augment import (AugmentConfig, ColourConfig, augment_batch, random_affine_matrices,
                                randomise_background)


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


def test_background_randomisation_moves_background_towards_near_neutral_targets():
    x = torch.zeros(64, 3, 16, 16)
    x[:, 0], x[:, 1], x[:, 2] = 0.75, 0.70, 0.72  # a pink-tinted background
    masks = torch.zeros(64, 1, 16, 16)
    masks[:, :, 4:8, 4:8] = 1
    x[:, :, 4:8, 4:8] = torch.tensor([0.5, 0.2, 0.6])[:, None, None]
    cfg = ColourConfig(brightness=(0.6, 0.8), apply_p=1.0, replace_p=0.0)  # targets below 1: no clipping
    out = randomise_background(x, masks, cfg, torch.Generator().manual_seed(0))
    bg = out[:, :, 0, 0]
    spread = bg.max(1).values / bg.min(1).values
    assert spread.max() <= (1 + cfg.tint) / (1 - cfg.tint) + 1e-4  # near-neutral backgrounds
    assert bg.std(0).mean() > 0.02  # and different from image to image
    # cells keep their colour relationships: same per-channel gain as the background
    ratio = out[:, :, 5, 5] / x[:, :, 5, 5]
    assert torch.allclose(ratio, bg / x[:, :, 0, 0], atol=1e-4)


def test_background_replacement_keeps_cell_pixels():
    x = torch.rand(16, 3, 16, 16)
    masks = (torch.rand(16, 1, 16, 16) > 0.7).float()
    cfg = ColourConfig(apply_p=0.0, replace_p=1.0)
    out = randomise_background(x, masks, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out * masks, x * masks)
    assert not torch.allclose(out * (1 - masks), x * (1 - masks))
