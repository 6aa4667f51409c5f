"""The backend registry on the bundled model, the TTA wrapper and the shared dihedral transforms."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from roadseg_plugin.core import params
from roadseg_plugin.core.backends import BACKENDS, Backend, DihedralTTA, TorchBackend, load_backend
from roadseg_plugin.core.checkpoint import BUNDLED_MODEL
from roadseg_plugin.core.dihedral import dihedral, inverse_dihedral
from roadseg_plugin.core.normalise import normalise
from tests.conftest import ROOT

SAMPLE = ROOT / "samples" / "massachusetts_19678630_crop.png"
needs_bundled_model = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason=f"no bundled model at {BUNDLED_MODEL}")


@pytest.fixture(scope="module")
def real_batch() -> np.ndarray:
    """Two normalised 256 px crops of the shipped Massachusetts sample (roads and background)."""
    meta = TorchBackend.load(BUNDLED_MODEL, "cpu").meta
    with rasterio.open(SAMPLE) as src:
        crops = [src.read(window=Window(x, y, 256, 256)) for x, y in ((0, 0), (256, 128))]
    return np.stack([normalise(c, meta) for c in crops])


def test_the_registry_names_are_the_parameter_names():
    assert set(params.BACKENDS) == {"auto", *BACKENDS}


@needs_bundled_model
def test_every_backend_loads_the_bundled_model_and_they_agree(real_batch):
    probs = {}
    for name in BACKENDS:
        backend = load_backend(device="cpu", backend=name)
        assert isinstance(backend, Backend)
        assert (backend.name, backend.device, backend.meta.tile) == (name, "cpu", 512)
        probs[name] = backend.predict(real_batch)
        assert probs[name].shape == (2, 256, 256) and probs[name].dtype == np.float32
        assert 0.0 <= probs[name].min() and probs[name].max() <= 1.0
    assert (probs["torch"] > backend.meta.threshold).mean() > 0.02, "the sample crops must show roads"
    np.testing.assert_allclose(probs["onnxruntime"], probs["torch"], atol=1e-4)
    int8, fp32 = probs["onnxruntime-int8"], probs["onnxruntime"]
    # Within a few /255 over the whole range: the probabilities are not clipped (the sigmoid runs
    # in float), so every threshold finds the same roads with int8 as with fp32. (The blended
    # weights of 343ad04076b9 quantise a little less tightly than the Massachusetts model's: 99th
    # percentile 4.3/255 against 3/255; the masks below still agree on 99.9 % of pixels.)
    diff = np.abs(int8 - fp32)
    assert np.quantile(diff, 0.99) < 5 / 255 and diff.mean() < 1 / 255
    assert int8.max() > 0.97 and fp32.max() > 0.97
    for threshold in (0.2, backend.meta.threshold, 0.5, 0.8, 0.9, 0.95):
        assert ((int8 > threshold) == (fp32 > threshold)).mean() > 0.999, threshold


@needs_bundled_model
def test_auto_runs_the_faster_of_the_shipped_onnx_files_on_this_cpu():
    from roadseg_plugin.core.backends.choice import cached_choice, pick
    from roadseg_plugin.core.onnx_backend import find_fp32, find_int8

    name = load_backend(device="cpu").name
    choice = cached_choice({"onnxruntime": find_fp32(), "onnxruntime-int8": find_int8()})
    assert choice is not None and choice.name == name == pick(choice.tiles_per_s)


@needs_bundled_model
def test_tta_is_the_average_over_the_eight_symmetries_of_the_square(real_batch):
    plain = load_backend(device="cpu", backend="torch")
    wrapped = load_backend(device="cpu", backend="torch", tta=True)
    assert isinstance(wrapped, DihedralTTA) and isinstance(wrapped, Backend)
    assert (wrapped.name, wrapped.device, wrapped.meta) == ("torch", "cpu", plain.meta)
    batch = real_batch[:1, :, :128, :96]  # not square: each orientation is undone exactly
    swap = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731 - the 8 (forward, inverse) pairs, written out
    rot = lambda a, k: np.rot90(a, k, axes=(-2, -1))  # noqa: E731
    symmetries = [(lambda a: a, lambda a: a), (lambda a: rot(a, 1), lambda a: rot(a, -1)),
                  (lambda a: rot(a, 2), lambda a: rot(a, 2)), (lambda a: rot(a, 3), lambda a: rot(a, 1)),
                  (swap, swap), (lambda a: swap(a)[..., ::-1, ::-1], lambda a: swap(a[..., ::-1, ::-1])),
                  (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
                  (lambda a: a[..., ::-1], lambda a: a[..., ::-1])]
    manual = np.mean([back(plain.predict(np.ascontiguousarray(turn(batch)))) for turn, back in symmetries], axis=0)
    np.testing.assert_allclose(wrapped.predict(batch), manual, atol=1e-6)


def test_an_unknown_backend_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'.*onnxruntime-int8"):
        load_backend(device="cpu", backend="tensorrt")


def test_dihedral_transforms_invert_and_agree_between_numpy_and_torch():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    seen = set()
    for k in range(8):
        turned, turned_t = dihedral(x, k), dihedral(torch.from_numpy(x), k)
        assert isinstance(turned, np.ndarray) and isinstance(turned_t, torch.Tensor)
        np.testing.assert_array_equal(turned_t.numpy(), turned)
        np.testing.assert_array_equal(inverse_dihedral(turned, k), x)
        assert torch.equal(inverse_dihedral(turned_t, k), torch.from_numpy(x))
        seen.add((turned.shape, turned.tobytes()))
    assert len(seen) == 8
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)
