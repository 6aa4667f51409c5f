import pytest
import torch

from roadseg_plugin.core.unet import UNet, build_model


@pytest.mark.parametrize("depth,size", [(2, 32), (3, 64), (4, 48), (4, 96)])
@pytest.mark.parametrize("upsampling", ["bilinear", "transpose"])
def test_output_shape_matches_input(depth, size, upsampling):
    model = UNet(in_channels=3, base_channels=4, depth=depth, upsampling=upsampling)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1, size, size)


def test_non_square_and_other_band_count():
    model = build_model("unet", in_channels=4, base_channels=4, depth=2, batch_norm=False)
    assert model(torch.randn(1, 4, 32, 64)).shape == (1, 1, 32, 64)


def test_size_not_multiple_of_depth_says_which_padding():
    model = UNet(base_channels=4, depth=3)
    with pytest.raises(RuntimeError, match=r"divisible by 8.*pad the input to 48x56"):
        model(torch.randn(1, 3, 41, 50))


def test_predict_returns_probabilities_without_grad():
    model = UNet(base_channels=4, depth=2)
    prob = model.predict(torch.randn(1, 3, 16, 16))
    assert not prob.requires_grad and not model.training
    assert 0 <= prob.min() and prob.max() <= 1


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match="valid: unet"):
        build_model("segformer")


def test_skip_connections_carry_full_resolution_detail():
    # A single-pixel impulse must change the output near that pixel: the stem's skip path
    # is what carries it, so a U-Net without skips would blur it away.
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3).eval()
    x = torch.zeros(1, 3, 32, 32)
    y = x.clone()
    y[0, :, 10, 10] = 5.0
    with torch.no_grad():
        diff = (model(y) - model(x)).abs()[0, 0]
    assert diff[9:12, 9:12].max() > 0
