import torch

from training.losses import masked_bce_dice, prob_bce_dice


def test_invalid_pixels_do_not_change_the_loss():
    logits = torch.randn(1, 8, 8)
    target = (torch.rand(1, 8, 8) > 0.5).float()
    valid = torch.ones(1, 8, 8)
    valid[:, :, :4] = 0
    other = logits.clone()
    other[:, :, :4] = 50.0  # wildly wrong where invalid
    assert torch.allclose(masked_bce_dice(logits, target, valid), masked_bce_dice(other, target, valid))
    assert not torch.allclose(masked_bce_dice(logits, target, torch.ones_like(valid)),
                              masked_bce_dice(other, target, torch.ones_like(valid)))


def test_perfect_prediction_has_low_loss_and_prob_version_agrees():
    target = (torch.rand(1, 16, 16) > 0.7).float()
    good = masked_bce_dice((target * 2 - 1) * 20, target, torch.ones_like(target))
    bad = masked_bce_dice(-(target * 2 - 1) * 20, target, torch.ones_like(target))
    assert good < 0.01 < 1.0 < bad
    logits = torch.randn(1, 16, 16)
    assert torch.allclose(prob_bce_dice(torch.sigmoid(logits), target, torch.ones_like(target)),
                          masked_bce_dice(logits, target, torch.ones_like(target)), atol=1e-4)


# ---------------------------------------------------------------- clDice and Lovasz options

import pytest  # noqa: E402

from training.losses import LOSSES, lovasz_hinge, soft_cldice, soft_skeleton  # noqa: E402


def road(size: int = 32, width: int = 5) -> torch.Tensor:
    target = torch.zeros(1, size, size)
    target[:, size // 2 - width // 2:size // 2 + width // 2 + 1, 4:-4] = 1
    return target


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_ignores_invalid_pixels_ranks_good_below_bad_and_has_gradients(name):
    loss = LOSSES[name]
    target = road()
    valid = torch.ones_like(target)
    valid[:, :, :6] = 0
    logits = torch.randn(1, 32, 32)
    other = logits.clone()
    other[:, :, :6] = 50.0
    assert torch.allclose(loss(logits, target, valid), loss(other, target, valid), atol=1e-5)
    good = loss((target * 2 - 1) * 10, target, valid)
    bad = loss(-(target * 2 - 1) * 10, target, valid)
    assert good < bad
    x = logits.clone().requires_grad_(True)
    loss(x, target, valid).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_soft_skeleton_thins_a_road_to_about_its_centreline():
    skel = soft_skeleton(road(width=7))
    rows = skel[0].sum(dim=1)
    assert skel.sum() < road(width=7).sum() / 3  # much thinner than the 7 px band
    assert int(rows.argmax()) == 16  # on the centre row


def test_cldice_rewards_connected_centrelines_more_than_dice_does():
    target = road(width=5)
    broken = target.clone()
    broken[:, :, 14:18] = 0  # a 4 px gap: most pixels right, the line cut in two
    wide = road(width=9)  # all of the centreline, too wide
    assert soft_cldice(wide, target, torch.ones_like(target)) < soft_cldice(broken, target, torch.ones_like(target))


def test_lovasz_is_zero_for_a_confident_perfect_prediction():
    target = road()
    assert lovasz_hinge((target * 2 - 1) * 2, target, torch.ones_like(target)) == 0
    assert lovasz_hinge(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)) == 0
