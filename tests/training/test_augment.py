import numpy as np
import pytest
import torch

from training.augment import augment, colour_jitter, dihedral


def test_dihedral_moves_all_arrays_together_and_has_eight_distinct_results():
    x = torch.arange(16.0).reshape(4, 4)
    results = set()
    for k in range(8):
        out = dihedral({"image": x[None].repeat(3, 1, 1), "mask": x.clone(), "valid": x.clone()}, k)
        assert torch.equal(out["image"][0], out["mask"]) and torch.equal(out["mask"], out["valid"])
        results.add(tuple(out["mask"].flatten().tolist()))
    assert len(results) == 8


def test_colour_jitter_stays_in_range_and_changes_image():
    rng = np.random.default_rng(0)
    img = torch.rand(3, 16, 16)
    out = colour_jitter(img, rng)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, img)


def test_augment_leaves_labels_binary():
    rng = np.random.default_rng(1)
    s = {"image": torch.rand(3, 8, 8), "mask": (torch.rand(8, 8) > 0.5).float(), "valid": torch.ones(8, 8)}
    out = augment(s, rng)
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert out["mask"].sum() == s["mask"].sum()


# ---------------------------------------------------------------- the robust recipe's shifts

from training.augment import (  # noqa: E402
    PHOTOMETRIC,
    QUANTILES,
    RobustAugment,
    band_quantiles,
    histogram_match,
    jpeg_array,
)


def scene(seed: int = 0, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=gen) * 0.5 + 0.2
    image[:, size // 2 - 2:size // 2 + 2, :] = 0.8  # a bright road across
    return image


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC))
def test_each_shift_keeps_shape_and_range_changes_the_image_and_repeats_with_a_seed(name):
    image = scene()
    fn = PHOTOMETRIC[name]
    out = fn(image.clone(), np.random.default_rng(3))
    again = fn(image.clone(), np.random.default_rng(3))
    assert out.shape == image.shape and out.dtype == image.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, image, atol=1e-3)
    assert torch.equal(out, again)
    other = fn(image.clone(), np.random.default_rng(4))
    assert not torch.equal(out, other)


def test_shifts_do_what_their_names_say():
    image = scene()
    rng = np.random.default_rng(0)
    assert PHOTOMETRIC["blur"](image, rng).std() < image.std()  # smoother
    hazy = PHOTOMETRIC["haze"](image, rng)
    assert hazy.std() < image.std() and hazy.mean() > image.mean()  # veiled: flatter, lighter
    grey = (image * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
    turned = PHOTOMETRIC["hue"](image, np.random.default_rng(1))
    turned_grey = (turned * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
    assert torch.allclose(grey, turned_grey, atol=0.02)  # hue rotation keeps luma (up to clipping)


def test_jpeg_round_trip_is_close_but_lossy():
    ramp = np.linspace(40, 200, 64)
    levels = np.stack([np.add.outer(ramp, ramp) / 2 + 10 * c for c in range(3)]).astype(np.uint8)
    levels[:, 30:34, :] = 230  # a road
    out = jpeg_array(levels, 30)
    assert out.shape == levels.shape and out.dtype == np.uint8
    assert 0 < np.abs(out.astype(int) - levels).mean() < 8


def test_histogram_match_takes_the_reference_tiles_quantiles():
    image = scene(0)
    reference = band_quantiles((scene(1).numpy() * 0.5 * 255).astype(np.uint8))
    assert reference.shape == (3, len(QUANTILES)) and reference.max() <= 1
    matched = histogram_match(image, reference)
    np.testing.assert_allclose(band_quantiles(matched.numpy())[:, 2:-2], reference[:, 2:-2], atol=0.03)
    half = histogram_match(image, reference, strength=0.5)
    assert torch.allclose(half, (image + matched) / 2, atol=1e-5)


def test_robust_policy_moves_labels_with_the_image_and_never_changes_their_values():
    mask = torch.zeros(32, 32)
    mask[14:18, :] = 1
    valid = torch.ones(32, 32)
    valid[:, :4] = 0
    sample = {"image": scene(), "mask": mask, "valid": valid}
    policy = RobustAugment([band_quantiles((scene(5).numpy() * 255).astype(np.uint8))], p=1.0, p_style=1.0)
    for seed in range(8):
        out = policy(dict(sample), np.random.default_rng(seed))
        again = policy(dict(sample), np.random.default_rng(seed))
        assert torch.equal(out["image"], again["image"])  # deterministic with a seed
        assert out["image"].shape == (3, 32, 32) and out["image"].min() >= 0 and out["image"].max() <= 1
        assert set(out["mask"].unique().tolist()) <= {0.0, 1.0} and out["mask"].sum() == mask.sum()
        assert out["valid"].sum() == valid.sum()
        k = next(k for k in range(8) if torch.equal(dihedral(sample, k)["mask"], out["mask"])
                 and torch.equal(dihedral(sample, k)["valid"], out["valid"]))  # one geometry for both labels
        assert k in range(8)


def test_robust_policy_with_no_shifts_is_the_geometry_only():
    sample = {"image": scene(), "mask": torch.zeros(32, 32), "valid": torch.ones(32, 32)}
    out = RobustAugment(p=0.0, p_style=0.0)(dict(sample), np.random.default_rng(2))
    assert any(torch.equal(dihedral(sample, k)["image"], out["image"]) for k in range(8))
    with pytest.raises(ValueError, match="unknown shift"):
        RobustAugment(shifts=["fog"])


def test_robust_recipe_trains_with_its_augmentation_loss_and_normalisation(road_dataset, tmp_path):
    from roadseg_plugin.core.checkpoint import load_model
    from roadseg_plugin.core.normalise import Radiometry
    from training import trainer as trainer_module
    from training.losses import masked_bce_dice
    from training.train import TrainConfig, train_model

    cfg = TrainConfig(data=road_dataset, out=tmp_path / "run", epochs=1, tile=32, infer_tile=64, overlap=8,
                      batch_size=4, depth=2, base_channels=4, samples_per_epoch=8, workers=0, device="cpu",
                      recipe="robust")
    trainer = train_model(cfg)
    assert isinstance(trainer.train_data.augment, RobustAugment)
    assert trainer.train_data.scale_jitter == 1.0
    assert trainer_module.masked_bce_dice is masked_bce_dice  # the recipe's loss only for the fit
    _, meta = load_model(tmp_path / "run" / "best.pt")
    radiometry = Radiometry.from_meta(meta)
    assert radiometry.mode == "auto" and len(radiometry.target) == 3
    assert "recipe robust, loss bce_cldice" in (tmp_path / "run" / "train.log").read_text()
    default = train_model(TrainConfig(data=road_dataset, out=tmp_path / "plain", epochs=1, tile=32, infer_tile=64,
                                      overlap=8, batch_size=4, depth=2, base_channels=4, samples_per_epoch=8,
                                      workers=0, device="cpu", freeze_encoder=True, loss="bce_lovasz"))
    assert default.train_data.augment is True and default.train_data.scale_jitter == 0.25
    assert all(not p.requires_grad for p in default.model.encoder.parameters())
    _, plain = load_model(tmp_path / "plain" / "best.pt")
    assert Radiometry.from_meta(plain).mode == "off"
