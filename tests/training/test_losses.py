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
