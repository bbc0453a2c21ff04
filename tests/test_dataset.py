import json

import numpy as np
import pytest
import torch
from PIL import Image

import src.dataset as dataset
from src.dataset import Batches, iterate_batches, load_split, preprocess
from src.errors import DataError
from tests.conftest import ATTRIBUTE_NAMES, face_like_image, make_celeba, tiny_config


def celeba_config(tmp_path, root=None, **data):
    return tiny_config(tmp_path, data={"dataset": "celeba", "root": str(root or tmp_path / "celeba"),
                                       "image_size": 16, "center_crop": 148, **data})


@pytest.mark.parametrize("layout", ["official", "torchvision", "gdrive", "kaggle", "zip"])
def test_every_layout_gives_the_same_splits_and_pixels(tmp_path, layout):
    reference = tmp_path / "reference"
    make_celeba(reference)
    make_celeba(tmp_path / "celeba", layout=layout)
    expected = load_split(celeba_config(tmp_path, reference, cache_dir=str(tmp_path / "c1")), "train")
    split = load_split(celeba_config(tmp_path, cache_dir=str(tmp_path / "c2")), "train")
    assert split.names == expected.names == [f"{i:06d}.jpg" for i in range(1, 13)]
    assert split.images.shape == (12, 3, 16, 16) and split.images.dtype == np.uint8
    np.testing.assert_array_equal(split.images, expected.images)
    assert split.attribute_names == ATTRIBUTE_NAMES
    np.testing.assert_array_equal(split.attributes, expected.attributes)
    assert len(load_split(celeba_config(tmp_path, cache_dir=str(tmp_path / "c2")), "test")) == 4


def test_worker_processes_give_the_same_array(tmp_path):
    make_celeba(tmp_path / "celeba")
    serial = load_split(celeba_config(tmp_path, cache_dir=str(tmp_path / "a")), "train")
    parallel = load_split(celeba_config(tmp_path, cache_dir=str(tmp_path / "b"), num_workers=2), "train")
    np.testing.assert_array_equal(serial.images, parallel.images)


def test_half_resolution_copy_gets_the_same_field_of_view(tmp_path):
    """An 89x109 image is cropped to 74 px, i.e. the same region as 148 px of the 178x218 frame."""
    full = face_like_image(3)
    half = full.resize((89, 109), Image.LANCZOS)
    a = preprocess(full, 32, 148).astype(float)
    b = preprocess(half, 32, 148).astype(float)
    shifted = preprocess(full, 32, 100).astype(float)  # a different crop, for scale
    assert np.abs(a - b).mean() < 3
    assert np.abs(a - shifted).mean() > 3 * np.abs(a - b).mean()


def test_odd_modes_and_sizes_convert_to_rgb(tmp_path):
    make_celeba(tmp_path / "celeba", size=(89, 109), modes={0: "L", 1: "RGBA", 2: "CMYK", 3: "P"})
    split = load_split(celeba_config(tmp_path), "train")
    assert split.images.shape == (12, 3, 16, 16)
    gray = split.images[0].astype(int)
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grayscale stays gray


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    assert (preprocess(rgba, 8, 0) == 255).all()


def test_partial_attributes_are_nan_for_missing_rows(tmp_path):
    make_celeba(tmp_path / "celeba", attributes_for=5)
    attrs = load_split(celeba_config(tmp_path), "train").attributes
    assert attrs.shape == (12, 3)
    assert not np.isnan(attrs[:5]).any() and np.isnan(attrs[5:]).all()
    assert set(np.unique(attrs[:5])) <= {0.0, 1.0}


def test_missing_data_says_what_and_where(tmp_path):
    with pytest.raises(DataError, match="does not exist.*quickstart"):
        load_split(celeba_config(tmp_path), "train")
    (tmp_path / "celeba").mkdir()
    with pytest.raises(DataError, match=r"missing img_align_celeba/.* and list_eval_partition.txt.*quickstart"):
        load_split(celeba_config(tmp_path), "train")


def test_broken_zip_is_named(tmp_path):
    make_celeba(tmp_path / "celeba", layout="zip")
    (tmp_path / "celeba" / "img_align_celeba.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"img_align_celeba.zip is not a valid zip archive"):
        load_split(celeba_config(tmp_path), "train")


def test_partition_naming_absent_images(tmp_path):
    make_celeba(tmp_path / "celeba")
    for name in ("000002.jpg", "000005.jpg"):
        (tmp_path / "celeba" / "img_align_celeba" / name).unlink()
    with pytest.raises(DataError, match=r"lists 2 train images that are not in .*first: 000002.jpg, 000005.jpg"):
        load_split(celeba_config(tmp_path), "train")


@pytest.mark.parametrize("line", ["000001.jpg 7", "000001.jpg", "000002.jpg 0"])
def test_malformed_partition(tmp_path, line):
    make_celeba(tmp_path / "celeba")
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text() + line + "\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt, line 21"):
        load_split(celeba_config(tmp_path), "train")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named(tmp_path, workers):
    make_celeba(tmp_path / "celeba")
    bad = tmp_path / "celeba" / "img_align_celeba" / "000004.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(DataError, match=r"cannot read image .*000004.jpg"):
        load_split(celeba_config(tmp_path, num_workers=workers), "train")
    assert not list((tmp_path / "cache").glob("*.npy")), "a failed build must leave no cache"


def test_cache_reloads_without_decoding(tmp_path, monkeypatch):
    make_celeba(tmp_path / "celeba")
    cfg = celeba_config(tmp_path)
    first = load_split(cfg, "train")
    monkeypatch.setattr(dataset, "_decode_chunk", lambda job: pytest.fail("decoded again"))
    second = load_split(cfg, "train")
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)
    assert second.names == first.names


def _cache_files(tmp_path):
    (npy,) = [p for p in (tmp_path / "cache").glob("*.npy") if not p.name.endswith(".labels.npy")]
    return npy, npy.with_suffix(".json")


def test_stale_cache_is_rebuilt(tmp_path, capsys):
    make_celeba(tmp_path / "celeba")
    cfg = celeba_config(tmp_path)
    before = np.array(load_split(cfg, "train").images)
    face_like_image(99).save(tmp_path / "celeba" / "img_align_celeba" / "000001.jpg", quality=95)
    after = load_split(cfg, "train").images
    assert "stale" in capsys.readouterr().out
    assert not np.array_equal(before[0], after[0]) and np.array_equal(before[1:], after[1:])


def test_corrupt_or_partial_cache_is_rebuilt(tmp_path, capsys):
    make_celeba(tmp_path / "celeba")
    cfg = celeba_config(tmp_path)
    good = np.array(load_split(cfg, "train").images)
    npy, meta = _cache_files(tmp_path)

    data = bytearray(npy.read_bytes())
    data[-10:] = bytes(10)  # flip the last pixels
    npy.write_bytes(bytes(data))
    np.testing.assert_array_equal(load_split(cfg, "train").images, good)
    assert "corrupt" in capsys.readouterr().out

    npy.write_bytes(npy.read_bytes()[:1000])  # truncated
    np.testing.assert_array_equal(load_split(cfg, "train").images, good)

    meta.unlink()  # an interrupted build writes no metadata
    np.testing.assert_array_equal(load_split(cfg, "train").images, good)
    assert json.loads(meta.read_text())["shape"] == [12, 3, 16, 16]


def test_folder_dataset_split_is_deterministic_and_disjoint(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(60):
        face_like_image(i, 40, 30).save(root / ("sub" if i % 2 else "") / f"img{i}.{'png' if i % 3 else 'jpg'}")
    cfg = tiny_config(tmp_path, data={"dataset": "folder", "root": str(root), "center_crop": 0})
    splits = {s: load_split(cfg, s).names for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 60
    assert not set(splits["train"]) & (set(splits["val"]) | set(splits["test"]))
    assert len(splits["train"]) > 45
    assert load_split(cfg, "val").names == splits["val"]


def test_synthetic_splits_are_disjoint_and_labelled(tmp_path):
    cfg = tiny_config(tmp_path)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    assert len(train) == 48 and len(val) == 16
    assert not set(train.names) & set(val.names)
    assert train.attributes.shape == (48, len(train.attribute_names))
    np.testing.assert_array_equal(load_split(cfg, "train").images, train.images)  # from the cache


def test_iterate_batches_covers_each_image_once():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=1)
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(images, 4, torch.device("cpu"), shuffle=True, generator=g))
    assert [len(b) for b in batches] == [4, 4, 2]
    seen = torch.cat(batches)[:, 0, 0, 0] * 255
    assert sorted(seen.round().long().tolist()) == list(range(10))
    assert batches[0].dtype == torch.float32 and batches[0].max() <= 10 / 255 + 1e-6
    assert len(list(iterate_batches(images, 4, torch.device("cpu"), drop_last=True))) == 2


def _ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0, 0, 0] * 255).round().long().tolist()


def test_batches_shard_an_epoch_across_ranks_and_resume_mid_epoch():
    images = np.arange(23, dtype=np.uint8).reshape(23, 1, 1, 1).repeat(3, axis=1)
    cpu = torch.device("cpu")
    whole = [i for b in Batches(images, 4, cpu, shuffle=True, seed=1).epoch(5) for i in _ids(b)]
    assert sorted(whole) == list(range(23))
    ranks = [Batches(images, 4, cpu, shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    shards = [[i for b in r.epoch(5) for i in _ids(b)] for r in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 3 and len(shards[0]) == len(shards[1]) == 11
    assert not set(shards[0]) & set(shards[1])  # disjoint; one image of 23 sits this epoch out
    assert [sorted(_ids(b)) for b in ranks[0].epoch(5)][1:] == [sorted(_ids(b)) for b in ranks[0].epoch(5, 1)]
    assert whole != [i for b in Batches(images, 4, cpu, shuffle=True, seed=1).epoch(6) for i in _ids(b)]


def test_batches_flip_on_the_device():
    images = np.zeros((64, 3, 2, 2), dtype=np.uint8)
    images[:, :, :, 0] = 255  # left column white
    torch.manual_seed(0)
    batch = next(Batches(images, 64, torch.device("cpu"), hflip=True).epoch())
    flipped = batch[:, 0, 0, 1] == 1
    assert 10 < flipped.sum() < 54 and (batch[flipped, :, :, 0] == 0).all()
