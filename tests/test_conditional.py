"""A conditional VAE (model.conditional): its labels, its images, training and loading it."""

import numpy as np
import pytest
import torch

import train
from src.batches import Batches
from src.checkpoint import load_trained
from src.conditioning import VALIDATION_EVERY, condition_names, labelled_sets
from src.dataset import ImageSplit
from src.errors import ConfigError, UserError, run_cli
from tests.conftest import make_celeba


def split(n: int, labels: np.ndarray | None, names=("a", "b")) -> ImageSplit:
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 2, 2), np.uint8)
    return ImageSplit(images, [str(i) for i in range(n)], labels, list(names) if labels is not None else [])


def test_training_uses_labelled_images_but_the_judges_held_out_tenth_and_validates_on_a_share_of_them():
    labels = np.tile([[1.0, 0.0], [0.0, 1.0]], (30, 1))
    labels[50:] = np.nan  # the last ten images are unlabelled
    train_set, unlabelled_val = split(60, labels), split(8, np.full((8, 2), np.nan))
    training, validation = labelled_sets(["b"], train_set, unlabelled_val)
    ids = set(training.images[:, 0, 0, 0]) | set(validation.images[:, 0, 0, 0])
    assert not ids & (set(range(0, 50, 10)) | set(range(50, 60)))  # held out (every 10th labelled), unlabelled
    assert len(ids) == 45 and len(validation) == len(range(VALIDATION_EVERY // 2, 45, VALIDATION_EVERY))
    assert not set(training.images[:, 0, 0, 0]) & set(validation.images[:, 0, 0, 0])
    assert np.array_equal(training.labels[:, 0], training.images[:, 0, 0, 0] % 2)  # "b" follows the rows
    training, validation = labelled_sets(["a", "b"], train_set, split(4, np.tile([[1.0, 0.0]], (4, 1))))
    assert len(validation) == 4 and len(training) == 45 and training.labels.shape == (45, 2)


def test_predicted_labels_let_unlabelled_images_train_but_never_validate():
    labels = np.tile([[1.0, 0.0], [0.0, 1.0]], (30, 1))
    labels[50:] = np.nan
    predicted = np.full((60, 1), 1.0, dtype=np.float32)
    training, validation = labelled_sets(["b"], split(60, labels), split(8, np.full((8, 2), np.nan)), predicted)
    ids = set(training.images[:, 0, 0, 0])
    assert set(range(50, 60)) <= ids and not set(validation.images[:, 0, 0, 0]) & set(range(50, 60))
    assert not ids & set(range(0, 50, 10)) and "10 of them by the labeller" in training.description
    guessed = training.images[:, 0, 0, 0] >= 50
    assert (training.labels[guessed, 0] == 1).all()
    labels[0, 1] = np.nan  # the judge's first held-out image lacks "b": predicted labels do not bring it in
    training, _ = labelled_sets(["b"], split(60, labels), split(8, np.full((8, 2), np.nan)), predicted)
    assert 0 not in set(training.images[:, 0, 0, 0])


def test_the_labels_are_named_checked_and_all_means_every_one():
    labelled = split(4, np.zeros((4, 2)))
    assert condition_names(["all"], labelled, "root") == ["a", "b"]
    with pytest.raises(ConfigError, match="no label 'c' in the training data; choose from a, b"):
        condition_names(["c"], labelled, "root")
    with pytest.raises(ConfigError, match="needs attribute labels, but the training images under 'photos' have none"):
        condition_names(["a"], split(4, None), "photos")


def test_labelled_batches_keep_each_image_with_its_labels():
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 2, 2), np.uint8)
    labels = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    for x, y in Batches(images, 4, torch.device("cpu"), shuffle=True, seed=3, labels=labels).epoch(1):
        assert torch.equal((x[:, 0, 0, 0] * 255).round(), y[:, 0])


def test_a_conditional_quickstart_trains_saves_and_loads(config_file, capsys):
    path = config_file(model={"conditional": ["all"], "condition": "both"}, train={"epochs": 2})
    train.main(["--config", str(path)])
    assert "conditional on" in capsys.readouterr().out
    model, cfg, state, _ = load_trained(None, str(path))
    assert "glasses" in cfg.model.conditional and model.conditions == len(cfg.model.conditional)
    assert all(np.isfinite(h["val_total"]) for h in state["history"])
    z, y = torch.zeros(2, model.latent_dim), torch.zeros(2, model.conditions)
    y[1, cfg.model.conditional.index("glasses")] = 1
    with torch.no_grad():
        faces = model.decode(z, y)
    assert faces.shape == (2, 3, 16, 16) and not torch.equal(faces[0], faces[1])
    train.main(["--config", str(path), "--resume", "train.epochs=3"])  # "all" resumes as the names it became
    assert len(load_trained(None, str(path)).state["history"]) == 3


def test_a_folder_without_labels_is_a_one_line_error(tmp_path, config_file, capsys):
    make_celeba(tmp_path / "photos", counts=(6, 2, 2))
    path = config_file(data={"dataset": "folder", "root": str(tmp_path / "photos" / "img_align_celeba")})
    with pytest.raises(SystemExit):
        run_cli(train.main, ["--config", str(path), 'model.conditional=["Smiling"]'])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'model.conditional' must be [] for data.dataset=folder" in err
    celeba = tmp_path / "celeba_without_labels"
    make_celeba(celeba, counts=(6, 2, 2))
    (celeba / "list_attr_celeba.txt").unlink()
    path = config_file(data={"dataset": "celeba", "root": str(celeba)}, model={"conditional": ["Smiling"]})
    with pytest.raises(SystemExit):
        run_cli(train.main, ["--config", str(path)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the images' caching bars
    assert last.startswith("error: model.conditional needs attribute labels") and str(celeba) in last


def test_the_adversary_learns_to_read_labels_from_codes():
    from src.adversary import adversary_step, label_loss, make_adversary
    torch.manual_seed(0)
    y = (torch.rand(64, 2) < 0.5).float()
    mu = torch.cat([y * 2 - 1, torch.randn(64, 3)], dim=1)  # the labels are in the codes
    adversary, optimizer = make_adversary(5, 2, torch.device("cpu"))
    before = label_loss(adversary, mu, y).item()
    for _ in range(100):
        adversary_step(adversary, optimizer, mu, y)
    assert label_loss(adversary, mu, y).item() < 0.2 * before


def test_a_run_with_an_adversary_and_the_label_loss_saves_it_and_resumes_exactly(tmp_path, config_file):
    from src.config import load_config
    path = config_file(model={"conditional": ["glasses", "hat"]}, train={"epochs": 2, "adversary": 5.0,
                                                                          "label_loss": 1.0})
    straight = load_config(path)
    train.main(["--config", str(path)])
    first = torch.load(f"{straight.paths.checkpoint_dir}/last_vae.pth", weights_only=False)
    resumed = [f"paths.checkpoint_dir={tmp_path / 'resumed'}", f"paths.results_dir={tmp_path / 'resumed_results'}"]
    train.main(["--config", str(path), "train.epochs=1", *resumed])
    train.main(["--config", str(path), "--resume", *resumed])
    second = torch.load(tmp_path / "resumed" / "last_vae.pth", weights_only=False)
    for key in ("model", "adversary"):
        a, b = first[key] if key == "model" else first[key]["model"], second[key] if key == "model" else second[key]["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), key
    with pytest.raises(ConfigError, match="'train.adversary' must be 0, or more when model.conditional"):
        load_config(path, ["model.conditional=[]"])


def test_the_labeller_is_a_second_network_cached_apart_from_the_judge(tmp_path):
    from src.attributes import indicators
    from src.conditioning import image_labels
    from src.judge import trained_judge
    from src.synthetic import FACTOR_NAMES, generate_faces
    faces, factors = generate_faces(40, seed=0, image_size=16)
    train_set = ImageSplit(faces, [str(i) for i in range(40)], factors.astype(np.float32), list(FACTOR_NAMES), "syn")
    labels, names = indicators(train_set)
    judge = trained_judge(faces, labels, names, "syn", tmp_path, torch.device("cpu"))
    decided = image_labels(faces[:6], ["glasses", "hat"], train_set, tmp_path, torch.device("cpu"))
    assert decided.shape == (6, 2) and set(np.unique(decided)) <= {0.0, 1.0}
    cached = sorted(p.name.split("-")[0] for p in tmp_path.glob("*.pt"))
    assert cached == ["judge", "labeller"]
    labeller = trained_judge(faces, labels, names, "syn", tmp_path, torch.device("cpu"), role="labeller")
    assert not torch.equal(judge.head.weight, labeller.head.weight)


def test_evaluate_scores_a_conditional_model_with_its_labels(config_file, tmp_path):
    import json

    import evaluate
    path = config_file(model={"conditional": ["glasses", "hat", "smile>median"], "condition_encoder": True})
    train.main(["--config", str(path)])
    evaluate.main(["--config", str(path), "--fid-samples", "8", f"paths.results_dir={tmp_path / 'eval'}"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["z_mean"]["total"]) and metrics["reconstruction"]["ssim"] > 0
    assert metrics["generative"]["gmm_vs_test"]["fid"] > 0 and metrics["generative"]["recon_vs_test"]["fid"] > 0


def test_labels_for_a_split_without_them_come_from_the_labeller_and_draws_follow_the_training_rows(tmp_path):
    from src.conditioning import drawn_labels, labels_for
    from src.synthetic import FACTOR_NAMES, generate_faces
    faces, factors = generate_faces(40, seed=0, image_size=16)
    factors = factors.astype(np.float32)
    factors[30:] = np.nan  # ten training images without labels
    train_set = ImageSplit(faces, [str(i) for i in range(40)], factors, list(FACTOR_NAMES), "syn")
    y = labels_for(["glasses", "hat"], train_set, train_set, tmp_path, torch.device("cpu"))
    assert y.shape == (40, 2) and not np.isnan(y).any() and list(tmp_path.glob("labeller-*.pt"))
    assert np.array_equal(y[:30], factors[:30][:, [FACTOR_NAMES.index("glasses"), FACTOR_NAMES.index("hat")]])
    draws = drawn_labels(["glasses", "hat"], train_set, 500, seed=1)
    assert draws.shape == (500, 2) and abs(draws[:, 0].mean() - y[:30, 0].mean()) < 0.1


def test_a_conditional_model_seen_through_its_codes_encodes_mu_and_the_labellers_labels():
    from src.conditioning import LabelledCodes
    from src.judge import Judge
    from src.latent import decode, posterior_means
    from src.model import ConvVAE
    vae = ConvVAE(latent_dim=4, hidden_dims=[8, 16], image_size=16, conditions=2, condition_encoder=True).eval()
    labeller = Judge(3).eval()
    torch.nn.init.zeros_(labeller.head.weight)
    labeller.head.bias.data = torch.tensor([5.0, -5.0, 5.0])  # decides 1, 0, 1 on every image
    model = LabelledCodes(vae, labeller, [2, 1], ["c", "b"])
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        codes = posterior_means(model, x)
        y = torch.tensor([[1.0, 0.0]] * 3)
        assert codes.shape == (3, 6) and torch.equal(codes[:, 4:], y)
        assert torch.equal(codes[:, :4], vae.encode(x, y)[0])
        assert torch.equal(decode(model, codes), vae.decode(codes[:, :4], y))


def test_a_label_edit_changes_only_the_chosen_label_and_directions_leave_the_labels_alone():
    from src.editing import LABEL, Edit, LatentAttributes, edited, lacks, slider_codes, sweep
    rng = np.random.default_rng(0)
    plain = LatentAttributes(["Smiling", "Male"], rng.normal(size=(2, 4)), np.array([[5, 5], [5, 5]]),
                             rng.normal(size=(2, 4)), np.zeros(2))
    attrs = plain.with_labels(["Smiling", "Male"])
    codes = np.concatenate([rng.normal(size=(3, 4)), [[0, 1], [1, 0], [0, 0]]], axis=1)
    assert np.allclose(attrs.logits("Male", codes), plain.logits("Male", codes[:, :4]))
    added = edited(codes, attrs, "Smiling", Edit(LABEL, strength=1.2), add=np.array([True, False, True]))
    assert np.allclose(added[:, 4], [1.2, -0.2, 1.2]) and np.array_equal(np.delete(added, 4, 1), np.delete(codes, 4, 1))
    moved = edited(codes, attrs, "Smiling", Edit("mean", 1.0))
    assert np.array_equal(moved[:, 4:], codes[:, 4:]) and not np.allclose(moved[:, :4], codes[:, :4])
    swept, columns = sweep(codes, attrs, "Male", Edit(LABEL, strength=1.0), 3)
    assert swept.shape == (3, 3, 6) and np.allclose(swept[0, :, 5], [0, 0.5, 1]) and columns[-1] == "y = 1.00"
    assert np.array_equal(lacks(codes, attrs, "Male", LABEL), [False, True, True])  # its own label, not z's reading
    half = slider_codes(codes, attrs, {"Male": 0.5}, LABEL, strength=1.0)
    assert np.allclose(half[:, 5], [1, 0.5, 0.5]) and np.array_equal(half[:, :5], codes[:, :5])
    with pytest.raises(UserError, match="Eyeglasses is not one of this model's labels"):
        edited(codes, attrs, "Eyeglasses", Edit(LABEL))


def test_inference_edits_a_conditional_model_by_label_and_judges_it_beside_the_directions(config_file, tmp_path):
    import json

    import inference
    path = config_file(model={"conditional": ["glasses", "hat"]}, train={"epochs": 2})
    train.main(["--config", str(path)])
    out = tmp_path / "inference"
    for sampler in ("prior", "gmm"):
        inference.main(["--config", str(path), "--edit", "glasses", "hat", "--method", "label", "--judge",
                        "--sampler", sampler, "--traverse", f"paths.results_dir={out}"])
    report = json.loads((out / "inference_test_set" / "edits.json").read_text())
    methods = report["attributes"]["glasses"]["methods"]
    assert {"label to 1", "label to 2", "conditional to p=0.999"} <= set(methods)
    assert all(0 <= m["success"] <= 1 for m in methods.values())
    assert methods["label to 1"]["latent_distance"] > 0  # the label moved, z did not
    for figure in ("samples.png", "edits.png", "morph.png", "traversals.png"):
        assert (out / "inference_test_set" / figure).stat().st_size > 0


def test_the_editors_label_sliders_move_one_label_of_a_conditional_model_in_a_real_browser(config_file, page,
                                                                                             tmp_path):
    from types import SimpleNamespace

    from src.conditioning import labelled_codes
    from src.dataset import load_split
    from src.editing import DEFAULT_TARGET, LABEL_STRENGTH, slider_codes
    from src.editor import create_app
    from src.studio import SampleRequest, Studio, fit
    from tests.conftest import face_like_image, serving
    from tests.test_editor import LOADED, MOVE, close, code_of, decoded, open_editor, pixels, shown, slider
    path = config_file(model={"conditional": ["glasses", "hat"]}, train={"epochs": 2})
    train.main(["--config", str(path)])
    vae, cfg, _, checkpoint = load_trained(None, str(path))
    model = labelled_codes(vae, cfg.model.conditional, load_split(cfg, "train"), cfg.data.cache_dir)
    fitted = fit(model, cfg, checkpoint)
    with serving(create_app(model, cfg, checkpoint, align=False, fitted=fitted)) as url:
        info = open_editor(page, url)
        assert "label" in info["methods"] and "glasses" in info["shown"]
        page.select_option("#method", "label")
        photo = tmp_path / "face.jpg"
        face_like_image(5).save(photo, quality=95)
        page.set_input_files("#edit-file", str(photo))
        page.wait_for_function(LOADED, arg="edit-output")
        code = code_of(SimpleNamespace(cfg=cfg, model=model), photo.read_bytes())
        page.evaluate(MOVE, [slider("glasses"), "edit-output", 100])
        values = {n: 0.0 for n in info["shown"]} | {"glasses": 1.0}
        expected = slider_codes(code[None], fitted.attrs, values, "label", DEFAULT_TARGET)[0]
        column = fitted.attrs.label_column("glasses")
        assert expected[column] == LABEL_STRENGTH and np.array_equal(np.delete(expected, column), np.delete(code, column))
        assert close(shown(page, "edit-output"), decoded(model, expected))

        page.click('nav .tab[data-tab="sample"]')  # generate with glasses: every sample's label says so
        assert page.is_visible("#labels-row")
        page.select_option("#present", ["glasses"])
        page.click("#draw")
        page.wait_for_function("() => document.querySelectorAll('#grid img').length === 16")
        request = SampleRequest(sampler=info["samplers"][0], seed=0, n=16, present=["glasses"])
        codes = Studio(model, cfg, fitted, align=False).codes(request).numpy()
        assert (codes[:, column] == 1).all()
        assert close(pixels(page.get_attribute("#grid img:first-child", "src")), decoded(model, codes[0]))


def test_samples_with_and_without_attributes_take_their_labels_from_training_images_that_have_them(config_file,
                                                                                                 tmp_path, capsys):
    import inference
    from src.conditioning import drawn_labels
    from src.dataset import load_split
    path = config_file(model={"conditional": ["glasses", "hat"]})
    train.main(["--config", str(path)])
    cfg = load_trained(None, str(path)).cfg
    rows = drawn_labels(["glasses", "hat"], load_split(cfg, "train"), 50, present=["glasses"], absent=["hat"])
    assert (rows[:, 0] == 1).all() and (rows[:, 1] == 0).all()
    inference.main(["--config", str(path), "--with", "glasses", "--without", "hat", "--n", "4",
                    f"paths.results_dir={tmp_path}"])
    assert (tmp_path / "inference_test_set" / "samples.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        run_cli(inference.main, ["--config", str(path), "--with", "smile>median", f"paths.results_dir={tmp_path}"])
    assert "smile>median is not one of this model's labels (glasses, hat)" in capsys.readouterr().err


def test_with_on_an_unconditional_model_is_a_one_line_error(trained, tmp_path, capsys):
    import inference
    with pytest.raises(SystemExit):
        run_cli(inference.main, ["--checkpoint", str(trained["checkpoint"]), "--with", "glasses",
                                 f"paths.results_dir={tmp_path}"])
    assert "--with and --without need a conditional model" in capsys.readouterr().err


def test_a_partly_labelled_celeba_trains_with_the_labellers_labels(tmp_path, config_file, capsys):
    make_celeba(tmp_path / "celeba", counts=(30, 4, 4), attributes_for=20)  # 10 training images unlabelled
    path = config_file(data={"dataset": "celeba", "root": str(tmp_path / "celeba")},
                       model={"conditional": ["Smiling"]}, train={"unlabelled": "labeller"})
    train.main(["--config", str(path)])
    out = capsys.readouterr().out
    assert "10 of them by the labeller" in out and "1 in 20 labelled training images" in out


def test_exporting_a_conditional_model_is_refused_in_one_line(config_file, tmp_path, capsys):
    from tools import export_model
    path = config_file(model={"conditional": ["glasses"]})
    train.main(["--config", str(path)])
    with pytest.raises(SystemExit):
        run_cli(export_model.main, ["--config", str(path), "--out", str(tmp_path / "c.pt")])
    assert "is a conditional model: exporting one is not supported yet" in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists()


def test_the_judged_conditional_direction_keeps_the_other_attributes_whatever_the_figure_shows():
    from src.showcase import EditPlan
    for method in ("label", "mean", "conditional"):
        plan = EditPlan(method, 0.999, None, None, labels=["a", "b"])
        compared = plan.compared("a", ["a", "b"])
        assert compared["conditional to p=0.999"].keep == ("b",)
        assert {"label to 1", "label to 2"} <= set(compared)


def test_the_label_loss_reads_faces_drawn_with_other_labels_and_trains_only_the_vae():
    from src.judge import Judge
    from src.label_loss import frozen, swapped_label_loss
    from src.model import ConvVAE
    torch.manual_seed(0)
    vae, labeller = ConvVAE(latent_dim=4, hidden_dims=[8, 16], image_size=16, conditions=2), frozen(Judge(5))
    before = {k: v.clone() for k, v in labeller.state_dict().items()}
    mu, y = torch.randn(6, 4), torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=torch.float32)
    loss = swapped_label_loss(vae, labeller, [3, 1], mu, y)
    loss.backward()
    assert loss.item() > 0 and vae.decoder_input.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in labeller.parameters()) and not labeller.training
    assert all(torch.equal(before[k], v) for k, v in labeller.state_dict().items())


def test_a_run_with_the_label_loss_trains_beside_its_cached_labeller(config_file, capsys):
    from src.config import load_config
    path = config_file(model={"conditional": ["glasses", "hat"]}, train={"epochs": 1, "label_loss": 10.0})
    train.main(["--config", str(path)])
    out = capsys.readouterr().out
    assert "label loss 10.0" in out and "training the attribute labeller" in out
    assert all(np.isfinite(h["val_total"]) for h in load_trained(None, str(path)).state["history"])
    with pytest.raises(ConfigError, match="'train.label_loss' must be 0, or more when model.conditional"):
        load_config(path, ["model.conditional=[]"])


def test_the_docs_figure_edits_the_same_faces_by_label_and_by_direction(config_file, tmp_path, capsys):
    from PIL import Image

    from tools import label_vs_direction
    path = config_file(model={"conditional": ["glasses", "hat"]}, train={"epochs": 1})
    train.main(["--config", str(path)])
    label_vs_direction.main(["--config", str(path), "--edit", "hat", "glasses", "--n", "2"])
    figure = tmp_path / "results" / "label_vs_direction.png"
    assert "wrote" in capsys.readouterr().out and Image.open(figure).size[1] > Image.open(figure).size[0]
    with pytest.raises(SystemExit) as stopped:
        run_cli(label_vs_direction.main, ["--config", str(path), "--edit", "smile"])
    assert stopped.value.code == 2 and "smile" in capsys.readouterr().err
