"""Steering the latent space: attribute directions, edits and their judge, traversals."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import inference
from src.attributes import binarize, held_out_mask, resolve
from src.editing import (
    Edit,
    LatentAttributes,
    direction,
    edited,
    fit_classifiers,
    judge_decider,
    logit,
    mean_difference,
    score_edit,
    slider_codes,
    steps_to_target,
    sweep,
)
from src.errors import UserError, run_cli
from src.judge import Judge, trained_judge
from src.latent import dims_by_kl, traversal_codes


def test_directions_are_mean_differences_and_ignore_unknown_labels():
    codes = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [100.0, 100.0]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [np.nan, np.nan]])  # the last image is unlabelled
    directions, counts = mean_difference(codes, labels)
    np.testing.assert_allclose(directions[0], [2.0 - 0.0, 0.0 - 3.0])  # mean(with) - mean(without)
    np.testing.assert_allclose(directions[1], -directions[0])
    assert counts.tolist() == [[2, 2], [2, 2]]
    only_with, _ = mean_difference(codes, np.array([[1.0], [1.0], [np.nan], [np.nan], [np.nan]]))
    assert np.isnan(only_with).all()  # nobody without it: no direction


def test_categorical_and_continuous_factors_become_indicators():
    factors = np.array([[0, 0.1, 1], [2, 0.9, 0], [1, 0.5, np.nan], [2, 0.2, 1]])
    matrix, names = binarize(factors, ["style", "width", "hat"])
    assert names == ["style=0", "style=1", "style=2", "width>median", "hat"]
    np.testing.assert_array_equal(matrix[:, 2], [0, 1, 0, 1])
    np.testing.assert_array_equal(matrix[:, 3], [0, 1, 1, 0])  # median 0.35
    assert np.isnan(matrix[2, 4])
    held_out, same_names = binarize(np.array([[2, 0.3, 0]]), ["style", "width", "hat"], reference=factors)
    assert same_names == names and held_out.tolist() == [[0, 0, 1, 0, 0]]  # train's categories and median


def test_an_unknown_attribute_lists_the_names_and_suggests_the_closest():
    with pytest.raises(UserError, match=r"unknown attribute 'Eyeglass'; did you mean 'Eyeglasses'\? "
                                        r"available: Eyeglasses, Smiling"):
        resolve(["Eyeglass"], ["Eyeglasses", "Smiling"])


def constructed_attributes(d: int = 6, seed: int = 0) -> tuple[np.ndarray, LatentAttributes]:
    """Codes with three known linear attributes (logits along fixed, non-orthogonal directions) and
    the classifiers fitted to them."""
    rng = np.random.default_rng(seed)
    codes = rng.normal(size=(3000, d))
    truth = np.array([[2.0, 1.0, 0, 0, 0, 0], [1.0, 0, 2.0, 0, 0, 0], [0, 0, 0, 0, 3.0, 0]])[:, :d]
    labels = (rng.random((3000, 3)) < 1 / (1 + np.exp(-codes @ truth.T))).astype(float)
    labels[:100, 0] = np.nan  # unknown labels are left out of the fit
    weights, biases = fit_classifiers(codes, labels)
    mean, counts = mean_difference(codes, labels)
    return codes, LatentAttributes(["a", "b", "c"], mean, counts, weights, biases)


def test_linear_classifiers_recover_a_known_attribute_direction():
    _, attrs = constructed_attributes()
    cosine = attrs.weights[0] @ [2, 1, 0, 0, 0, 0] / np.linalg.norm(attrs.weights[0]) / np.sqrt(5)
    assert cosine > 0.99 and abs(attrs.biases[0]) < 0.2


def test_a_target_probability_is_reached_exactly_along_any_direction():
    codes, attrs = constructed_attributes()
    for method in ("mean", "normal", "conditional"):
        how = Edit(method, None, 0.9, keep=("b",) if method == "conditional" else ())
        add = np.arange(len(codes)) % 2 == 0
        moved = edited(codes, attrs, "a", how, add)
        p = 1 / (1 + np.exp(-attrs.logits("a", moved)))
        np.testing.assert_allclose(p, np.where(add, 0.9, 0.1), atol=1e-6)
    # a face already past the target moves back to it: the step depends on the face
    steps = steps_to_target(codes[:2], attrs.weights[0], attrs.biases[0], attrs.weights[0], 0.9)
    assert steps[0] != steps[1]


def test_a_conditional_direction_is_orthogonal_to_the_kept_normals_and_keeps_their_logits():
    codes, attrs = constructed_attributes()
    d = direction(attrs, "a", "conditional", keep=("b", "c"))
    assert abs(d @ attrs.weights[1]) < 1e-9 and abs(d @ attrs.weights[2]) < 1e-9 and d @ attrs.weights[0] > 0
    np.testing.assert_allclose(direction(attrs, "a", "conditional"), attrs.mean[0])  # keeping nothing: the mean
    unit = direction(attrs, "a", "normal")
    assert np.linalg.norm(unit) == pytest.approx(1) and unit @ attrs.weights[0] > 0
    moved = edited(codes, attrs, "a", Edit("conditional", None, 0.95, keep=("b", "c")))
    np.testing.assert_allclose(attrs.logits("b", moved), attrs.logits("b", codes), atol=1e-9)
    unconditional = edited(codes, attrs, "a", Edit("normal", None, 0.95))
    assert np.abs(attrs.logits("b", unconditional) - attrs.logits("b", codes)).mean() > 0.1  # a and b are entangled
    with pytest.raises(UserError, match="cannot be edited and kept"):
        direction(attrs, "a", "conditional", keep=("a",))


def test_sweeps_run_over_strengths_or_target_probabilities():
    codes, attrs = constructed_attributes()
    fixed, labels = sweep(codes[:2], attrs, "a", Edit("mean", 1.5), 3)
    assert fixed.shape == (2, 3, 6) and labels == ["-1.50", "s = 0", "+1.50"]
    np.testing.assert_allclose(fixed[:, 2] - codes[:2], np.tile(1.5 * attrs.mean[0], (2, 1)))
    targeted, labels = sweep(codes[:2], attrs, "a", Edit("normal", None, 0.9), 3)
    assert labels == ["p = 0.1", "p = 0.5", "p = 0.9"]
    np.testing.assert_allclose(1 / (1 + np.exp(-attrs.logits("a", targeted[:, 2]))), 0.9, atol=1e-6)


def test_sliders_end_where_edited_puts_a_face_and_conditional_ones_do_not_disturb_each_other():
    codes, attrs = constructed_attributes()
    codes = codes[:50]
    for method in ("mean", "normal", "conditional"):
        for v, add in ((1.0, True), (-1.0, False)):
            keep = ("b",) if method == "conditional" else ()
            np.testing.assert_allclose(slider_codes(codes, attrs, {"a": v, "b": 0.0}, method, target=0.9),
                                       edited(codes, attrs, "a", Edit(method, None, 0.9, keep), add), atol=1e-9)
    assert np.array_equal(slider_codes(codes, attrs, {"a": 0.0, "b": 0.0}, "normal"), codes)  # the middle: as it is
    # conditional: each attribute moves the fraction of the way its own slider says, whatever the other does
    moved = slider_codes(codes, attrs, {"a": 0.5, "b": -1.0, "c": 0.0}, "conditional", target=0.9)
    before = {n: attrs.logits(n, codes) for n in "abc"}
    np.testing.assert_allclose(attrs.logits("a", moved), before["a"] + 0.5 * (logit(0.9) - before["a"]), atol=1e-9)
    np.testing.assert_allclose(attrs.logits("b", moved), logit(0.1), atol=1e-9)
    np.testing.assert_allclose(attrs.logits("c", moved), before["c"], atol=1e-9)
    strength = slider_codes(codes, attrs, {"a": -0.5}, "mean", target=None, strength=2.0)
    np.testing.assert_allclose(strength - codes, np.tile(-1.0 * attrs.mean[0], (50, 1)))
    with pytest.raises(UserError, match="between -1 and 1"):
        slider_codes(codes, attrs, {"a": 1.5}, "mean")


def test_edit_and_traversal_codes():
    start = torch.tensor([0.5, 0.5, 0.5])
    grid = traversal_codes(start, [2, 0], torch.tensor([-3.0, 3.0]))
    assert grid.shape == (2, 2, 3) and grid[0, 1].tolist() == [0.5, 0.5, 3.0] and grid[1, 0].tolist() == [-3.0, 0.5, 0.5]


def test_traversal_dimensions_are_ordered_by_mean_kl():
    mu = np.zeros((4, 3))
    mu[:, 1] = [2, -2, 2, -2]     # KL 2 on average
    mu[:, 2] = [1, -1, 1, -1]     # KL 0.5
    dims = dims_by_kl(mu, np.zeros((4, 3)), k=2)
    assert [d for d, _ in dims] == [1, 2] and dims[0][1] == pytest.approx(2.0)


class Brightness(nn.Module):
    """A toy VAE whose decoded image is uniformly z[0] bright (and a judge reading brightness)."""

    def __init__(self):
        super().__init__()
        self.fc_mu = nn.Linear(1, 1)

    @property
    def device(self) -> torch.device:
        return self.fc_mu.weight.device

    def decode(self, z):
        return z[:, :1, None, None].expand(len(z), 3, 4, 4).clamp(0, 1)


class BrightnessJudge(Judge):
    def __init__(self):
        super().__init__(1)

    def forward(self, x):
        return (x.mean(dim=(1, 2, 3)) - 0.5)[:, None] * 20  # "has it" = brighter than 0.5


def test_edit_success_and_preservation_on_a_case_with_a_known_answer():
    codes = np.array([[0.2, 0.1], [0.3, 0.9], [0.8, 0.1], [0.9, 0.9]])
    labels = np.array([0.0, 0.0, 1.0, np.nan])  # dark images lack it, bright ones have it; one unknown
    # the judge reads brightness (z[0]) and, as a second attribute, whether z[1] > 0.5
    decide = lambda z: np.stack([z[:, 0] > 0.5, z[:, 1] > 0.5], axis=1)
    along = lambda step: lambda z, add: z + np.where(add, 1.0, -1.0)[:, None] * step
    right = score_edit(decide, codes, labels, 0, [0, 1], along(np.array([0.5, 0.0])))
    assert right["success"] == 1.0 and right["images"] == 3 and right["baseline"] == 0.0
    assert right["preservation"] == 1.0 and right["latent_distance"] == pytest.approx(0.5)
    wrong = score_edit(decide, codes, labels, 0, [0, 1], along(np.array([0.0, 5.0])))
    assert wrong["success"] == 0.0 and wrong["preservation"] == pytest.approx(2 / 3)  # 2 of 3 flip z[1]


def test_the_judge_decides_on_decoded_images():
    decide = judge_decider(Brightness(), BrightnessJudge())
    assert decide(np.array([[0.2], [0.45], [0.55], [0.9]]))[:, 0].tolist() == [False, False, True, True]


def test_the_judge_is_trained_once_per_data_and_attributes(tmp_path, monkeypatch, capsys):
    from src import judge as judge_module
    monkeypatch.setattr(judge_module, "JUDGE_EPOCHS", 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)
    labels = (images.mean(axis=(1, 2, 3)) > 127).astype(float)[:, None]
    first = trained_judge(images, labels, ["bright"], "data-a", tmp_path, torch.device("cpu"))
    monkeypatch.setattr(judge_module, "fit_judge", lambda *a, **k: pytest.fail("retrained a cached judge"))
    again = trained_judge(images, labels, ["bright"], "data-a", tmp_path, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    monkeypatch.undo()
    monkeypatch.setattr(judge_module, "JUDGE_EPOCHS", 1)
    trained_judge(images, labels, ["bright"], "data-b", tmp_path, torch.device("cpu"))  # other data: its own
    assert len(list(tmp_path.glob("judge-*.pt"))) == 2
    assert held_out_mask(labels).sum() == 4  # every tenth labelled image is kept out of training


def run(trained, tmp_path, *args):
    inference.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}", *args])
    return tmp_path / "inference_test_set"


def test_edits_png_gif_and_json(trained, tmp_path, monkeypatch, capsys):
    from src import judge as judge_module
    monkeypatch.setattr(judge_module, "JUDGE_EPOCHS", 1)
    out = run(trained, tmp_path, "--edit", "glasses", "hat", "--edit-rows", "3", "--edit-steps", "5", "--judge")
    with Image.open(out / "edits.png") as png:
        width, height = png.size
    cell = 16 * 6  # 16-px images upscaled to at least 96 px
    assert width >= 7 * cell and height >= 2 * 3 * cell  # 2 + 5 columns; 2 blocks of 3 rows
    with Image.open(out / "edits.gif") as gif:
        assert gif.n_frames == 2 * 5 - 2
    report = json.loads((out / "edits.json").read_text())
    assert set(report["attributes"]) == {"glasses", "hat"} and "test split" in report["held_out"]
    for r in report["attributes"].values():
        assert 0 <= r["judge_accuracy"] <= 1
        assert list(r["methods"]) == ["mean, strength 1", "mean to p=0.999", "normal to p=0.999",
                                      "conditional to p=0.999"]
        for m in r["methods"].values():
            assert 0 <= m["success"] <= 1 and m["images"] == 16 and m["latent_distance"] > 0
    printed = capsys.readouterr().out
    assert "conditional to p=0.999" in printed and "glasses" in printed


def test_traversals_and_edits_of_one_own_image(trained, tmp_path, capsys):
    Image.new("RGB", (40, 50), (200, 120, 90)).save(tmp_path / "me.png")
    out = run(trained, tmp_path, "--images", str(tmp_path / "me.png"), "--traverse", "--dims", "3")
    assert "no morph (it needs two)" in capsys.readouterr().out
    assert {"traversals.png", "traversals.gif", "samples.png"} <= {p.name for p in out.iterdir()}
    with Image.open(out / "traversals.gif") as gif:
        assert gif.n_frames == 2 * 7 - 2


@pytest.mark.parametrize("args, message", [
    (["--edit", "glases"], "unknown attribute 'glases'; did you mean 'glasses'?"),
    (["--edit", "hat", "--edit-steps", "4"], "--edit-steps must be odd"),
])
def test_bad_edit_arguments_are_one_line(trained, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        run_cli(inference.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}", *args])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_data_without_labels_says_so(trained, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        Image.new("RGB", (20, 20), (i * 6, 100, 50)).save(photos / f"{i}.png")
    with pytest.raises(SystemExit):
        run_cli(inference.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}",
                                 "--edit", "hat", "data.dataset=folder", f"data.root={photos}", "data.center_crop=0",
                                 f"data.cache_dir={tmp_path / 'cache'}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and "has no attribute labels" in lines[0]
