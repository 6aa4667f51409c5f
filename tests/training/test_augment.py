import numpy as np
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
