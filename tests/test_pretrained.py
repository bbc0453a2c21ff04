"""A pretrained file: exported from a checkpoint, loaded with weights_only and checked against its
recorded SHA-256, and enough to sample and edit without any dataset."""

import hashlib

import numpy as np
import pytest
import torch

from src import dataset
from src.checkpoint import load_trained
from src.config import Config
from src.editing import Edit, edited
from src.latent import latent_codes
from src.pretrained import PRETRAINED_FORMAT, RESULTS_DIR, SUMS, PretrainedError, load_pretrained, recorded_digest
from src.studio import fit
from tools import export_model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained") / "tiny.pt"
    export_model.main(["--checkpoint", str(trained["checkpoint"]), "--out", str(out)])
    return out


def test_the_file_loads_with_weights_only_and_matches_its_recorded_sha256(exported):
    contents = torch.load(exported, weights_only=True)
    assert contents["format"] == PRETRAINED_FORMAT
    assert all(v.dtype in (torch.float16, torch.int64) for v in contents["weights"].values())
    assert recorded_digest(exported) == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert (exported.parent / SUMS).read_text().endswith(f"  {exported.name}\n")


def test_the_file_keeps_how_the_model_was_trained_but_not_where_its_files_were(trained, tmp_path):
    out = tmp_path / "portable.pt"
    export_model.main(["--checkpoint", str(trained["checkpoint"]), "--out", str(out), "train.threads=1",
                       f"paths.results_dir={tmp_path / 'mine'}", f"data.cache_dir={tmp_path / 'cache'}"])
    shipped, default = load_pretrained(out).cfg, Config()
    _, cfg, _, _ = load_trained(str(trained["checkpoint"]))
    assert (shipped.model, shipped.train.beta, shipped.train.epochs) == (cfg.model, cfg.train.beta, cfg.train.epochs)
    assert shipped.data.image_size == cfg.data.image_size and shipped.data.dataset == cfg.data.dataset
    assert (shipped.data.root, shipped.data.cache_dir) == (default.data.root, default.data.cache_dir)
    assert shipped.train.threads == "auto" and shipped.paths.results_dir == RESULTS_DIR


def test_it_draws_and_edits_what_the_checkpoint_does(trained, exported):
    model, cfg, _, checkpoint = load_trained(str(trained["checkpoint"]))
    pretrained = load_pretrained(exported)
    assert pretrained.cfg.model == cfg.model and not pretrained.model.training
    fitted = fit(model, cfg, checkpoint)
    z = latent_codes("gmm", 8, model.latent_dim, seed=0, gmm=fitted.gmm)
    with torch.no_grad():  # float16 weights: the same faces to a few 8-bit levels
        assert (pretrained.model.decode(z) - model.decode(z)).abs().max() < 0.02
    assert pretrained.attrs.names == fitted.attrs.names and pretrained.dims == fitted.dims
    assert np.allclose(pretrained.gmm["covariances"], fitted.gmm["covariances"])
    assert np.allclose(pretrained.attrs.weights, fitted.attrs.weights)


def test_sampling_and_editing_need_no_dataset(exported, monkeypatch):
    monkeypatch.setattr(dataset, "load_split", lambda *a: pytest.fail("read a dataset"))
    pretrained = load_pretrained(exported)
    name = pretrained.attrs.names[0]
    z = latent_codes("gmm", 4, pretrained.model.latent_dim, seed=1, gmm=pretrained.gmm).double().numpy()
    moved = edited(z, pretrained.attrs, name, Edit("mean", None, 0.99), add=True)
    probability = 1 / (1 + np.exp(-pretrained.attrs.logits(name, moved)))
    assert np.allclose(probability, 0.99)
    with torch.no_grad():
        assert pretrained.model.decode(torch.from_numpy(moved).float()).shape == (4, 3, 16, 16)


def test_a_changed_byte_is_a_one_line_error(exported, tmp_path):
    damaged = tmp_path / exported.name
    data = bytearray(exported.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    (tmp_path / SUMS).write_text((exported.parent / SUMS).read_text())
    with pytest.raises(PretrainedError, match=r"is damaged or replaced: its SHA-256 is") as e:
        load_pretrained(damaged)
    assert "\n" not in str(e.value) and str(damaged) in str(e.value)
    (tmp_path / SUMS).write_text("")
    with pytest.raises(PretrainedError, match="has no SHA-256"):
        load_pretrained(damaged)



# ----------------------------------------------------------------------------- which model a script uses

@pytest.fixture
def shipped(exported, monkeypatch):
    """The exported tiny model stands in for the shipped one."""
    from src import pretrained
    monkeypatch.setattr(pretrained, "SHIPPED", exported)
    return exported


def test_without_a_trained_checkpoint_the_shipped_model_is_used_and_named(shipped, tmp_path, capsys):
    import inference
    inference.main([f"paths.checkpoint_dir={tmp_path / 'none'}", f"paths.results_dir={tmp_path}",
                    f"data.root={tmp_path / 'no_data'}", "data.dataset=folder", "--sampler", "gmm"])
    out = capsys.readouterr().out
    assert f"no trained model at {tmp_path / 'none' / 'best_vae.pth'}: using the shipped model" in out
    assert f"{shipped} (epoch" in out and "the figures use generated faces" in out
    written = sorted(p.name for p in (tmp_path / "inference_test_set").iterdir())
    assert written == ["morph.gif", "morph.png", "samples.png"]  # no images to reconstruct: samples morphed


def test_a_trained_checkpoint_wins_and_pretrained_names_the_shipped_one(shipped, trained, tmp_path, capsys):
    import inference
    base = [f"paths.results_dir={tmp_path}", "--n", "4"]
    inference.main([f"paths.checkpoint_dir={trained['checkpoint'].parent}", *base])
    out = capsys.readouterr().out
    assert f"{trained['checkpoint']} (epoch 2)" in out and "shipped" not in out
    inference.main(["--checkpoint", "pretrained", f"paths.checkpoint_dir={trained['checkpoint'].parent}", *base])
    assert f"{shipped} (epoch 2)" in capsys.readouterr().out


def test_editing_a_photo_with_the_shipped_model_reads_no_dataset(shipped, tmp_path, monkeypatch, capsys):
    from PIL import Image

    import inference
    monkeypatch.setattr(inference, "load_split", lambda *a: pytest.fail("read a dataset"))
    Image.new("RGB", (40, 40), "orange").save(tmp_path / "photo.png")
    name = load_pretrained(shipped).attrs.names[0]
    inference.main([f"paths.checkpoint_dir={tmp_path / 'none'}", f"paths.results_dir={tmp_path}",
                    "--images", str(tmp_path / "photo.png"), "--edit", name, "--align", "off"])
    assert (tmp_path / "inference_test_set" / "photo_edits.png").is_file()


def test_training_never_starts_from_the_shipped_model(shipped, config_file, monkeypatch):
    import train
    from src import pretrained
    monkeypatch.setattr(pretrained, "load_pretrained", lambda *a: pytest.fail("training read the shipped model"))
    monkeypatch.setattr(pretrained, "shipped_parts", lambda *a: pytest.fail("training read the shipped model"))
    train.main(["--config", str(config_file())])


def test_the_editor_says_which_model_it_serves_and_how_to_serve_another(shipped, trained):
    from src.editor import create_app
    from tests.conftest import serving
    from tools.editor_load import Client
    for checkpoint, name in ((shipped, f"the shipped pretrained model ({shipped.name})"),
                             (trained["checkpoint"], "checkpoints/best_vae.pth")):
        model, cfg, _, path = load_trained(str(checkpoint))
        with serving(create_app(model, cfg, path, align=False)) as url:
            info = Client(url).json("GET", "/api/info")
        assert info["model"] == name and info["serve_another"] == "python inference.py --serve --checkpoint PATH"


def test_the_hub_entry_loads_from_a_local_directory_and_samples_encodes_and_edits(exported, tmp_path):
    from pathlib import Path

    from PIL import Image
    repo = Path(__file__).resolve().parent.parent
    model = torch.hub.load(str(repo), "celeba64", source="local", path=str(exported))
    faces = model.sample(4, seed=3)
    assert faces.shape == (4, 3, 16, 16) and 0 <= faces.min() and faces.max() <= 1
    assert torch.equal(faces, model.sample(4, seed=3))  # seeded
    Image.new("RGB", (30, 40), "teal").save(tmp_path / "me.png")
    x = model.photo(tmp_path / "me.png")
    name = model.attributes[0]
    added = model.edit(x, name, target=0.99)
    codes = model.encode(added).double().numpy()
    assert added.shape == x.shape and model.pretrained.attrs.logits(name, codes)[0] > 0  # now reads as having it


def test_the_shipped_model_loads_with_weights_only_matches_its_sha256_and_edits_without_data():
    from pathlib import Path

    from src.pretrained import SHIPPED
    contents = torch.load(SHIPPED, weights_only=True)
    assert contents["format"] == PRETRAINED_FORMAT and SHIPPED.stat().st_size <= 12 * 2**20
    assert recorded_digest(SHIPPED) == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    model = torch.hub.load(str(Path(__file__).resolve().parent.parent), "celeba64", source="local")
    faces = model.sample(2, seed=0)
    assert faces.shape == (2, 3, 64, 64)
    smiling = model.edit(faces, "Smiling", target=0.99)
    logits = model.pretrained.attrs.logits("Smiling", model.encode(smiling).double().numpy())
    assert (logits > 0).all()  # the edited faces read as smiling to the shipped classifier
