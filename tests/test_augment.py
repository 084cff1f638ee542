import torch

from leukostage.training.augment import AugmentConfig, StainConfig, augment_batch, random_affine_matrices, stain_jitter


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


def test_stain_jitter_without_jitter_is_the_identity():
    x = _smear_like(4)
    assert torch.allclose(stain_jitter(x, StainConfig(scale=0.0, shift=0.0)), x, atol=1e-5)
    assert torch.allclose(stain_jitter(x, StainConfig(apply_p=0.0)), x, atol=1e-5)


def test_stain_jitter_changes_colours_per_image_within_unit_range_and_is_seeded():
    x = _smear_like(32)
    a = stain_jitter(x, StainConfig(apply_p=1.0), torch.Generator().manual_seed(1))
    b = stain_jitter(x, StainConfig(apply_p=1.0), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    assert 0.0 <= a.min() and a.max() <= 1.0
    cell = a[:, :, 5, 5]
    assert cell.std(0).mean() > 0.01  # different stain amounts from image to image
    # a jitter, not a repaint: the cell stays far darker than the background
    assert (a[:, :, 5, 5].mean(1) < a[:, :, 0, 0].mean(1) - 0.2).all()


def test_mask_channels_ride_along_with_the_same_warp():
    x = torch.rand(3, 3, 32, 32)
    mask = (torch.rand(3, 1, 32, 32) > 0.5).float()
    out = augment_batch(torch.cat([x, mask], 1), AugmentConfig(), torch.Generator().manual_seed(5))
    alone = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(5))
    assert torch.allclose(out[:, :3], alone, atol=1e-6)
