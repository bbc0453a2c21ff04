"""Tests for the procedural face generator (src/synthetic.py)."""
import numpy as np
import pytest

from src.synthetic import FACTOR_NAMES, generate_faces

COL = {name: i for i, name in enumerate(FACTOR_NAMES)}


@pytest.fixture(scope="module")
def batch():
    return generate_faces(300, seed=3)


def test_factor_names():
    assert FACTOR_NAMES == ("skin_tone", "hair_colour", "hair_style", "face_width", "eye_spacing",
                            "smile", "glasses", "hat", "background")


@pytest.mark.parametrize("size", [8, 32, 64, 96])
def test_shapes_and_dtypes(size):
    images, factors = generate_faces(5, seed=0, image_size=size)
    assert images.shape == (5, 3, size, size) and images.dtype == np.uint8
    assert factors.shape == (5, len(FACTOR_NAMES)) and factors.dtype == np.float32


def test_empty():
    images, factors = generate_faces(0, seed=0)
    assert images.shape == (0, 3, 64, 64) and factors.shape == (0, len(FACTOR_NAMES))


@pytest.mark.parametrize("kwargs", [dict(n=-1, seed=0), dict(n=2, seed=0, image_size=7),
                                    dict(n=2, seed=-1), dict(n=2, seed=0, start=-3)])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_faces(**kwargs)


def test_deterministic_and_sliceable():
    images, factors = generate_faces(20, seed=11)
    again = generate_faces(20, seed=11)
    assert np.array_equal(images, again[0]) and np.array_equal(factors, again[1])
    part_images, part_factors = generate_faces(10, seed=11, start=5)
    assert np.array_equal(part_images, images[5:15]) and np.array_equal(part_factors, factors[5:15])


def test_different_seeds_differ():
    a, fa = generate_faces(10, seed=1)
    b, fb = generate_faces(10, seed=2)
    assert not np.array_equal(a, b) and not np.array_equal(fa, fb)


def test_factor_ranges(batch):
    _, f = batch
    for name, k in [("skin_tone", 5), ("hair_colour", 4), ("hair_style", 4), ("background", 5)]:
        col = f[:, COL[name]]
        assert np.all(col == np.round(col)) and col.min() >= 0
        assert len(np.unique(col)) >= k, f"{name} should take several values"
    for name in ("glasses", "hat"):
        assert set(np.unique(f[:, COL[name]])) == {0.0, 1.0}
    for name, lo, hi in [("face_width", 0, 1), ("eye_spacing", 0, 1), ("smile", -1, 1)]:
        col = f[:, COL[name]]
        assert col.min() >= lo and col.max() <= hi and col.std() > 0.2 * (hi - lo) / 2


def test_occlusion_rates(batch):
    _, f = batch
    assert 0.10 < f[:, COL["glasses"]].mean() < 0.32   # intended 20%
    assert 0.06 < f[:, COL["hat"]].mean() < 0.26       # intended 15%


def test_images_not_trivial(batch):
    images, _ = batch
    x = images[:50].astype(np.float32)
    assert x.reshape(50, -1).std(axis=1).min() > 15, "every face should have visible structure"
    diffs = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))
    assert diffs.min() > 5, "consecutive faces should differ"
