"""The independent digit classifier used to judge generated digits, and the Fréchet distance."""

import pytest
import torch

from layercache.models.tiny.classifier import classify, features, frechet_distance, held_out_accuracy, load_classifier


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_held_out_accuracy_on_real_digits(classifier):
    assert held_out_accuracy(classifier) >= 0.97


def test_classify_and_features_shapes(classifier):
    images = torch.rand(3, 1, 32, 32)
    assert classify(classifier, images).shape == (3,)
    assert features(classifier, images).shape == (3, 64)
    with pytest.raises(ValueError, match="shape"):
        classify(classifier, torch.rand(3, 32, 32))


def test_missing_or_corrupt_weights_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_classifier(tmp_path / "nowhere.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(bad)


def test_frechet_distance_of_gaussians():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # N(0, I) vs N(m, 4I) in 4-D: |m|^2 + tr(I + 4I - 2*2I) = |m|^2 + 4
    shift = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    assert frechet_distance(a, 2 * b + shift) == pytest.approx(5 + 4, rel=0.03)
