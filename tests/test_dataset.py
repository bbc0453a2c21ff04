import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import src.cache as cache_module
import src.celeba as celeba
import src.dataset as dataset
from src.batches import Batches, iterate_batches
from src.dataset import load_split
from src.errors import DataError
from src.images import preprocess
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


def test_decoder_processes_write_rows_and_send_back_only_labels(tmp_path):
    """Image-sized results through the pool's pipe can hang Pool.terminate() on Ctrl-C (a worker
    blocked mid-write): workers write their rows into the file and return a count and labels."""
    path = tmp_path / "cache.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(12, 3, 16, 16))
    start, row_bytes = out.offset, out[0].nbytes
    del out
    count, labels, kept = cache_module._write_rows((dataset._generate_chunk, (5, 7, 42, 16), path, start + 5 * row_bytes))
    images, factors, _ = dataset._generate_chunk((5, 7, 42, 16))
    cache = np.load(path)
    assert count == 7 and np.array_equal(labels, factors) and kept is None
    np.testing.assert_array_equal(cache[5:], images)
    assert not cache[:5].any()  # rows before the offset untouched


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


def test_iterate_batches_covers_each_image_once_in_order():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, axis=1)
    batches = list(iterate_batches(images, 4, torch.device("cpu")))
    assert [len(b) for b in batches] == [4, 4, 2]
    seen = torch.cat(batches)[:, 0, 0, 0] * 255
    assert seen.round().long().tolist() == list(range(10))
    assert batches[0].dtype == torch.float32 and batches[0].max() <= 10 / 255 + 1e-6
    raw = list(iterate_batches(images, 4, torch.device("cpu"), uint8=True))
    assert raw[0].dtype == torch.uint8 and torch.cat(raw)[:, 0, 0, 0].tolist() == list(range(10))


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


# ----------------------------------------------------------------------------- cache builds under stress

CONCURRENT_BUILD = """
import sys
from src.config import load_config
from src.dataset import load_split
split = load_split(load_config(sys.argv[1]), "train")
print("images", int(split.images.sum()))
"""


def test_concurrent_builders_of_one_cache_wait_for_a_single_build(tmp_path):
    tiny_config(tmp_path, data={"synthetic_train": 6000})  # a build of ~3 s: the two runs overlap
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BUILD, str(tmp_path / "config.json")],
                              cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    builds = [err.count("caching synthetic train") > 0 for _, err in outputs]
    assert sorted(builds) == [False, True], outputs  # one built it; the other waited and reused it
    assert outputs[0][0].splitlines()[-1] == outputs[1][0].splitlines()[-1]  # the same pixels


def test_local_rank_zero_builds_first_on_every_node(monkeypatch):
    """Global rank 8 is local rank 0 of the second node: it must not wait for node 0's cache."""
    from src import distributed as training
    events = []
    monkeypatch.setattr(training.dist, "barrier", lambda: events.append("barrier"))
    monkeypatch.setattr(training.dist, "is_initialized", lambda: True)
    for local_rank in (0, 1):
        with training.local_rank_zero_first(local_rank):
            events.append(f"build {local_rank}")
    assert events == ["build 0", "barrier", "barrier", "build 1"]


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    stale = tmp_path / "cache" / "synthetic-train-16px-crop148-seed42-n48-16-16.tmp99999.npy"
    stale.parent.mkdir()
    stale.write_bytes(b"left by a killed build")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    with pytest.raises(DataError, match=r"not enough space in data.cache_dir '.*cache' for the cache: it needs "
                                        r"0\.0 MB, [\d.]+ MB are free; free some space or set data.cache_dir"):
        load_split(cfg, "train")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == []
    monkeypatch.undo()
    assert len(load_split(cfg, "train")) == 48


def test_zip_members_are_read_with_a_size_cap(tmp_path, monkeypatch):
    make_celeba(tmp_path / "celeba", layout="zip")
    monkeypatch.setattr(celeba, "MAX_IMAGE_BYTES", 1000)  # our test JPEGs are a few kB: "huge" here
    with pytest.raises(DataError, match=r"img_align_celeba.zip:img_align_celeba/000001.jpg: its uncompressed "
                                        r"size \d+ bytes exceeds 1000"):
        load_split(celeba_config(tmp_path), "train")


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
        out = preprocess(img, 32, 0).astype(int)
    expected = np.round(ramp / 257).astype(int)
    assert np.abs(out[0] - expected).max() <= 1 and (out[0] == out[2]).all()
    assert len(np.unique(out)) > 200  # a ramp, not black and white


def test_synthetic_caches_of_other_sizes_coexist(tmp_path, monkeypatch):
    small = tiny_config(tmp_path, data={"synthetic_val": 16})
    large = tiny_config(tmp_path, data={"synthetic_val": 32})
    a, b = load_split(small, "train"), load_split(large, "train")
    assert len(list((tmp_path / "cache").glob("synthetic-train-*.json"))) == 2
    monkeypatch.setattr(dataset, "_generate_chunk", lambda job: pytest.fail("rebuilt"))
    np.testing.assert_array_equal(load_split(small, "train").images, a.images)
    np.testing.assert_array_equal(load_split(large, "train").images, b.images)


def test_corrupt_labels_are_rebuilt(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    good = load_split(cfg, "train").attributes.copy()
    (labels,) = (tmp_path / "cache").glob("*.labels.npy")
    np.save(labels, np.zeros_like(good))
    np.testing.assert_array_equal(load_split(cfg, "train").attributes, good)
    assert "corrupt" in capsys.readouterr().out


def test_md5_is_not_used_for_security(tmp_path, monkeypatch):
    """On FIPS systems hashlib.md5 refuses to run unless told it is not for security."""
    real_md5 = hashlib.md5

    def fips_md5(*args, usedforsecurity=True, **kwargs):
        if usedforsecurity:
            raise ValueError("[digital envelope routines] unsupported")
        return real_md5(*args, usedforsecurity=False, **kwargs)

    monkeypatch.setattr(hashlib, "md5", fips_md5)
    make_celeba(tmp_path / "celeba")
    assert len(load_split(celeba_config(tmp_path), "train")) == 12
    face_like_image(0).save(tmp_path / "photo.jpg")
    folder = tiny_config(tmp_path, data={"dataset": "folder", "root": str(tmp_path / "celeba")})
    assert len(load_split(folder, "train")) > 0


def test_training_epochs_never_end_in_a_batch_of_one():
    images = np.zeros((33, 3, 2, 2), dtype=np.uint8)
    batches = Batches(images, 16, torch.device("cpu"), shuffle=True)
    assert len(batches) == 2 and [len(b) for b in batches.epoch()] == [16, 16]
    assert [len(b) for b in Batches(images, 16, torch.device("cpu")).epoch()] == [16, 16, 1]  # evaluation: all
