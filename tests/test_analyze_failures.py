import csv

import numpy as np
import pytest
from PIL import Image

import analyze_failures
from src import failures
from src.errors import run_cli
from src.synthetic import FACTOR_NAMES
from tests.conftest import ATTRIBUTE_NAMES, make_celeba


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(trained, results, *options, data=()):
    # Options first: argparse takes the overrides as one positional list, so they may not be split by options.
    analyze_failures.main(["--checkpoint", str(trained["checkpoint"]), *options, f"paths.results_dir={results}",
                           *data])
    return results / "failure_gallery"


# --------------------------------------------------------------------------- pure functions

def test_planted_attribute_tops_the_lift_table():
    rng = np.random.default_rng(0)
    n = 2000
    planted = (rng.random(n) < 0.2).astype(np.float32)
    noise_attr = (rng.random(n) < 0.3).astype(np.float32)
    errors = 10 + 100 * planted + rng.normal(0, 1, n)
    planted[:100] = np.nan          # unknown for some images, including some hard ones
    noise_attr[-50:] = np.nan
    rows = failures.attribute_lift(errors, np.stack([noise_attr, planted], 1), ["random", "hard"])
    assert [r["attribute"] for r in rows] == ["hard", "random"]
    hard, rand = rows
    assert hard["known"] == n - 100 and rand["known"] == n - 50
    assert hard["worst"] == round(0.05 * (n - 100))
    assert hard["rate_all"] == pytest.approx(np.nanmean(planted))  # NaN rows are not counted as 0
    assert hard["rate_worst"] == 1.0
    assert hard["lift"] == pytest.approx(1 / hard["rate_all"])
    assert hard["error_with"] > 100 > hard["error_without"]
    assert 0.4 < rand["lift"] < 1.8


def test_binarisation_names_and_exact_lift():
    n = 20
    errors = np.arange(n, 0, -1).astype(float)       # image 0 is the worst
    cat = np.arange(n) % 4                             # categorical: one column per value
    cont = np.linspace(-1, 1, n)                       # continuous: above the median
    binary = (np.arange(n) % 2 == 1).astype(float)
    empty = np.full(n, np.nan)                         # never known: dropped
    attrs = np.stack([cat, cont, binary, empty], 1).astype(np.float32)
    rows = failures.attribute_lift(errors, attrs, ["cat", "cont", "bin", "empty"])
    by_name = {r["attribute"]: r for r in rows}
    assert set(by_name) == {"cat=0", "cat=1", "cat=2", "cat=3", "cont>median", "bin"}
    assert rows[0]["attribute"] == "cat=0" and rows[0]["lift"] == pytest.approx(4.0)  # worst 5% = image 0
    assert by_name["cat=0"]["worst"] == 1 and by_name["cont>median"]["lift"] == 0.0
    assert by_name["cont>median"]["rate_all"] == 0.5
    assert by_name["bin"]["error_with"] == pytest.approx(errors[1::2].mean())


# --------------------------------------------------------------------------- script

def test_gallery_csv_and_lift_on_synthetic_faces(trained, tmp_path, capsys):
    out = run(trained, tmp_path)
    rows = read_csv(out / "failures.csv")
    assert len(rows) == 16 and [int(r["rank"]) for r in rows] == list(range(1, 17))
    errors = [float(r["error"]) for r in rows]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0
    assert list(rows[0]) == ["rank", "file", "error", *FACTOR_NAMES]
    assert len({r["file"] for r in rows}) == 16 and rows[0]["glasses"] in ("0", "1")
    for name in ("failure_gallery.png", "best_gallery.png"):
        with Image.open(out / name) as img:
            w, h = img.size
            assert 4 * 2 * failures.CELL < w < 2000 and 4 * failures.CELL < h < 1500
    lift = read_csv(out / "attribute_lift.csv")
    names = {r["attribute"] for r in lift}
    assert {"glasses", "hat", "smile>median", "face_width>median"} <= names
    assert any(n.startswith("hair_style=") for n in names)
    printed = capsys.readouterr().out
    assert "synthetic test, 16 images" in printed and "lift" in printed and "failure_gallery.png" in printed

    run(trained, tmp_path, "--split", "val", "--top", "3")
    assert len(read_csv(out / "failures.csv")) == 16
    with Image.open(out / "failure_gallery.png") as img:
        assert img.size[0] < 3 * 2 * failures.CELL + 200


def test_attribute_that_makes_images_hard_tops_the_table(trained, tmp_path, capsys):
    root = tmp_path / "celeba"
    names = make_celeba(root, counts=(60, 4, 4), attributes_for=45)  # Eyeglasses = 1 for every 3rd image
    rng = np.random.default_rng(1)
    for i in range(0, len(names), 3):  # ... and those become high-contrast noise, the rest stay smooth
        blocks = (rng.random((22, 18, 3)) < 0.5).astype(np.uint8) * 255
        Image.fromarray(blocks).resize((178, 218), Image.NEAREST).save(root / "img_align_celeba" / names[i],
                                                                       quality=95)
    data = ["data.dataset=celeba", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    out = run(trained, tmp_path / "results", "--split", "train", data=data)
    lift = read_csv(out / "attribute_lift.csv")
    assert lift[0]["attribute"] == "Eyeglasses" and float(lift[0]["lift"]) == pytest.approx(3.0)
    assert int(lift[0]["known"]) == 45 and {r["attribute"] for r in lift} == set(ATTRIBUTE_NAMES)
    rows = read_csv(out / "failures.csv")
    assert len(rows) == 60 and sum(r["Eyeglasses"] == "" for r in rows) == 15  # no row in the list: empty
    assert "Eyeglasses" in capsys.readouterr().out

    # The test images have no attribute row: galleries and failures.csv, no stale lift table.
    run(trained, tmp_path / "results", "--split", "test", data=data)
    assert not (out / "attribute_lift.csv").exists() and len(read_csv(out / "failures.csv")) == 4
    assert "try --split train" in capsys.readouterr().out


def test_folder_data_without_attributes(trained, tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            folder / f"face_{i:02d}.png")
    out = run(trained, tmp_path / "results", "--split", "train",
              data=["data.dataset=folder", f"data.root={folder}", f"data.cache_dir={tmp_path / 'cache'}"])
    rows = read_csv(out / "failures.csv")
    assert list(rows[0]) == ["rank", "file", "error"] and len(rows) >= 8
    assert (out / "failure_gallery.png").exists() and not (out / "attribute_lift.csv").exists()
    assert "no attributes" in capsys.readouterr().out


def test_bad_top_is_one_line(trained, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(analyze_failures.main, ["--checkpoint", str(trained["checkpoint"]), "--top", "0"])
    err = capsys.readouterr().err
    assert err.startswith("error: --top") and err.count("\n") == 1
