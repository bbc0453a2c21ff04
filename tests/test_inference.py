import math

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from src.errors import run_cli
from src.latent import interpolate, interpolate_at, morph_rows

SIZE, PAD = 16, 2  # the `trained` fixture's image_size; save_image_grid's padding


def grid_size(columns: int, rows: int) -> tuple[int, int]:
    """(width, height) of a save_image_grid PNG."""
    return columns * (SIZE + PAD) + PAD, rows * (SIZE + PAD) + PAD


def run(trained, tmp_path, *args):
    inference.main(["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}", *args])
    return tmp_path / "inference_test_set"


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_writes_the_four_files_with_their_layouts(trained, tmp_path, capsys):
    out = run(trained, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["morph.gif", "morph.png", "reconstructions.png", "samples.png"]
    assert Image.open(out / "samples.png").size == grid_size(8, 8)                # 64 samples
    assert Image.open(out / "reconstructions.png").size == grid_size(8, 4)        # 2 blocks of 8
    assert Image.open(out / "morph.png").size == grid_size(10 + 2, 2 * 4)         # 4 pairs, lerp + slerp
    with Image.open(out / "morph.gif") as gif:
        assert gif.n_frames == 2 * 10 - 2 and min(gif.size) >= 128
    printed = capsys.readouterr().out
    assert all(f"wrote {out / name}" in printed for name in ("samples.png", "morph.png", "morph.gif"))

    # Row 1 of reconstructions.png holds originals: the first test image, as the data cache has it.
    from src.checkpoint import load_checkpoint, model_from_checkpoint
    from src.dataset import load_split
    _, cfg = model_from_checkpoint(load_checkpoint(trained["checkpoint"]))
    first = load_split(cfg, "test").images[0].transpose(1, 2, 0)
    assert np.array_equal(pixels(out / "reconstructions.png")[PAD:PAD + SIZE, PAD:PAD + SIZE], first)
    # The ends of every morph row are the real images (lerp and slerp rows of a pair share them).
    morph = pixels(out / "morph.png")
    cell = lambda r, c: morph[PAD + r * (SIZE + PAD):][:SIZE, PAD + c * (SIZE + PAD):][:, :SIZE]
    assert np.array_equal(cell(0, 0), first)
    assert np.array_equal(cell(0, 0), cell(1, 0)) and np.array_equal(cell(0, 11), cell(1, 11))


def test_samples_are_reproducible_by_seed(trained, tmp_path):
    a = pixels(run(trained, tmp_path / "a", "--n", "10", "--seed", "3") / "samples.png")
    b = pixels(run(trained, tmp_path / "b", "--n", "10", "--seed", "3") / "samples.png")
    c = pixels(run(trained, tmp_path / "c", "--n", "10", "--seed", "4") / "samples.png")
    assert a.shape[1::-1] == grid_size(4, 3)  # ceil(sqrt(10)) = 4 per row
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("args, message", [(["--temperature", "0"], "--temperature must be"),
                                           (["--temperature", "-1"], "--temperature must be"),
                                           (["--steps", "1"], "--steps must be at least 2"),
                                           (["--n", "0"], "--n must be at least 1")])
def test_bad_arguments_are_refused_in_one_line(trained, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        run_cli(inference.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}", *args])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "inference_test_set").exists()


def test_interpolate_endpoints_and_norms():
    z0, z1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for spherical in (False, True):
        path = interpolate(z0, z1, 5, spherical)
        assert path.shape == (5, 3) and path.dtype == torch.float32
        assert torch.equal(path[0], z0) and torch.equal(path[-1], z1)
    slerp_mid = interpolate(z0, z1, 3, spherical=True)[1]
    lerp_mid = interpolate(z0, z1, 3, spherical=False)[1]
    assert slerp_mid.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert lerp_mid.norm().item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    # Parallel codes (angle 0) and a zero code fall back to the straight line, without NaN.
    for a, b in [(z0, 2 * z0), (torch.zeros(3), z1)]:
        path = interpolate(a, b, 4, spherical=True)
        assert torch.allclose(path, interpolate(a, b, 4, spherical=False))


def test_interpolate_at_any_fraction_is_the_path_interpolate_takes():
    g = torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(16, generator=g), torch.randn(16, generator=g)
    for spherical in (False, True):
        path = interpolate(z0, z1, 5, spherical)
        assert torch.allclose(interpolate_at(z0, z1, torch.tensor([0.0, 0.25, 1.0]), spherical), path[[0, 1, 4]])
        assert torch.equal(interpolate_at(z0, z1, torch.tensor([1.0]), spherical)[0], z1)  # exact ends


def test_slerp_keeps_the_norm_of_equal_norm_codes():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(128, generator=g), torch.randn(128, generator=g)
    z1 = z1 * z0.norm() / z1.norm()
    path = interpolate(z0, z1, 9, spherical=True)
    assert torch.allclose(path.norm(dim=1), z0.norm().expand(9), rtol=1e-5)


def test_own_images_need_no_dataset(trained, tmp_path, capsys):
    for name, colour in (("a.png", (220, 40, 40)), ("b.png", (30, 60, 200))):
        Image.new("RGB", (40, 50), colour).save(tmp_path / name)
    # data.root points nowhere: reading any split would fail, so none is read.
    out = run(trained, tmp_path, "--images", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--steps", "6",
              "--align", "off", "data.dataset=celeba", f"data.root={tmp_path / 'no_celeba'}")
    assert sorted(p.name for p in out.iterdir()) == ["aligned", "morph.gif", "morph.png", "samples.png"]
    assert sorted(p.name for p in (out / "aligned").iterdir()) == ["a.png", "b.png"]
    assert np.all(pixels(out / "aligned" / "a.png") == (220, 40, 40))
    morph = pixels(out / "morph.png")
    assert morph.shape[1::-1] == grid_size(6 + 2, 2)
    assert np.all(morph[PAD:PAD + SIZE, PAD:PAD + SIZE] == (220, 40, 40))  # the first image, left end
    with Image.open(out / "morph.gif") as gif:
        assert gif.n_frames == 2 * 6 - 2


def test_missing_or_unreadable_image_is_one_line(trained, tmp_path, capsys):
    good = tmp_path / "a.png"
    Image.new("RGB", (20, 20), "red").save(good)
    (tmp_path / "notes.png").write_text("not an image")
    for bad, words in ((tmp_path / "missing.jpg", "not found"), (tmp_path / "notes.png", "cannot read image")):
        with pytest.raises(SystemExit):
            run_cli(inference.main, ["--checkpoint", str(trained["checkpoint"]), f"paths.results_dir={tmp_path}",
                                     "--images", str(good), str(bad)])
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(bad) in err and words in err and err.count("\n") == 1


class NoFloat64(torch.Tensor):
    """Stands in for a tensor on Apple's MPS, which has no float64: only .cpu() leaves that device."""

    def double(self):
        raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")

    def cpu(self):
        return self.as_subclass(torch.Tensor)


class OnMPS(torch.nn.Module):
    """A trained model whose codes come back 'on MPS' and whose decoder takes float32 only."""

    def __init__(self, model):
        super().__init__()
        self.model, self.fc_mu = model, model.fc_mu

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode(self, x):
        mu, logvar = self.model.encode(x)
        return mu.as_subclass(NoFloat64), logvar

    def decode(self, z):
        assert z.dtype == torch.float32
        return self.model.decode(z.as_subclass(torch.Tensor))


def test_morphs_interpolate_on_the_cpu_for_devices_without_float64(trained):
    from src.checkpoint import load_checkpoint, model_from_checkpoint
    model, _ = model_from_checkpoint(load_checkpoint(trained["checkpoint"]))
    a, b = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        lerp, slerp = morph_rows(OnMPS(model.eval()), a, b, steps=5)
        expected = morph_rows(model, a, b, steps=5)
    assert torch.equal(lerp, expected[0]) and torch.equal(slerp, expected[1])


@pytest.mark.parametrize("n", [5, 8, 11])
def test_image_grids_match_torchvisions_save_image(tmp_path, n):
    import torchvision.utils

    from src.figures import save_image_grid
    images = torch.rand(n, 3, 6, 7, generator=torch.Generator().manual_seed(n))
    ours = np.asarray(Image.open(save_image_grid(images, tmp_path / "ours.png", nrow=4)), dtype=int)
    torchvision.utils.save_image(images, tmp_path / "tv.png", nrow=4, padding=2, pad_value=1.0)
    theirs = np.asarray(Image.open(tmp_path / "tv.png"), dtype=int)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1  # rounding of exact halves
