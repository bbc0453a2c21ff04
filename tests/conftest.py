"""Shared fixtures: tiny CelebA-style trees and fast configs, all inside tmp_path; the editor served on
a free port, and headless Chromium driven by playwright (its fixtures live here: a second
sync_playwright() in another module fails)."""

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from src.config import Config, load_config

ATTRIBUTE_NAMES = ["Eyeglasses", "Smiling", "Wearing_Hat"]


def face_like_image(index: int, width: int = 178, height: int = 218) -> Image.Image:
    """A smooth random RGB picture (JPEG-friendly, different for each index)."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BICUBIC)


def make_celeba(root: Path, counts=(12, 4, 4), layout: str = "official", size=(178, 218),
                attributes_for: int | None = None, modes: dict[int, str] | None = None) -> list[str]:
    """Write a tiny CelebA in one of the supported layouts; returns the image names.

    layout: official | torchvision | gdrive | kaggle | zip.  `attributes_for` = how many images
    get a row in the attribute list (None = all).  `modes` = {index: PIL mode} for odd images.
    """
    names = [f"{i + 1:06d}.jpg" for i in range(sum(counts))]
    labels = [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    base = root / "celeba" if layout == "torchvision" else root
    image_dir = {"gdrive": base / "Img" / "img_align_celeba",
                 "kaggle": base / "img_align_celeba" / "img_align_celeba"}.get(layout, base / "img_align_celeba")
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        img = face_like_image(i, *size)
        mode = (modes or {}).get(i)
        if mode:
            img = img.convert(mode)
        img.save(image_dir / name, format="PNG" if mode in ("RGBA", "P") else "JPEG", quality=95)

    rows = [(n, [1 if (i + k) % 3 == 0 else -1 for k in range(len(ATTRIBUTE_NAMES))])
            for i, n in enumerate(names)][:attributes_for]
    if layout == "kaggle":
        (base / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{l}\n" for n, l in zip(names, labels)))
        (base / "list_attr_celeba.csv").write_text(
            "image_id," + ",".join(ATTRIBUTE_NAMES) + "\n"
            + "".join(f"{n}," + ",".join(map(str, v)) + "\n" for n, v in rows))
        return names
    eval_dir, anno_dir = (base / "Eval", base / "Anno") if layout == "gdrive" else (base, base)
    eval_dir.mkdir(parents=True, exist_ok=True)
    anno_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "list_eval_partition.txt").write_text("".join(f"{n} {l}\n" for n, l in zip(names, labels)))
    (anno_dir / "list_attr_celeba.txt").write_text(
        f"{len(rows)}\n" + " ".join(ATTRIBUTE_NAMES) + "\n"
        + "".join(f"{n} " + " ".join(f"{v:2d}" for v in vals) + "\n" for n, vals in rows))
    if layout == "zip":
        import shutil
        shutil.make_archive(str(base / "img_align_celeba"), "zip", base, "img_align_celeba")
        shutil.rmtree(image_dir)
    return names


def tiny_config(tmp_path: Path, **sections) -> Config:
    """A fast config (16x16 images, small model) writing only under tmp_path; sections override keys."""
    raw = {
        "data": {"dataset": "synthetic", "root": str(tmp_path / "celeba"), "image_size": 16,
                 "cache_dir": str(tmp_path / "cache"), "num_workers": 0,
                 "synthetic_train": 48, "synthetic_val": 16, "synthetic_test": 16},
        "model": {"latent_dim": 8, "hidden_dims": [8, 16]},
        # a forced thread count: "auto" would make the numbers depend on the machine's load (src/threads.py)
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu", "seed": 0, "threads": 1},
        "paths": {"checkpoint_dir": str(tmp_path / "checkpoints"), "results_dir": str(tmp_path / "results")},
    }
    for section, values in sections.items():
        raw[section].update(values)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    return load_config(path)


@pytest.fixture
def config_file(tmp_path):
    """Write a tiny config to tmp_path/config.json and return its path (same keys as tiny_config)."""
    def write(**sections) -> Path:
        tiny_config(tmp_path, **sections)
        return tmp_path / "config.json"
    return write


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """A tiny VAE trained for 2 epochs on synthetic faces, shared by the script tests.

    Returns {"dir", "config", "checkpoint"}; tests pass `paths.results_dir=...` of their own.
    """
    import train
    root = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(root, train={"epochs": 2})
    config = root / "config.json"
    train.main(["--config", str(config)])
    return {"dir": root, "config": config, "checkpoint": Path(cfg.paths.checkpoint_dir) / "best_vae.pth"}


# --------------------------------------------------------------------------- the editor and a real browser

@contextmanager
def serving(app):
    """Serve a FastAPI app with uvicorn on a free port of 127.0.0.1 in a thread; yields its URL."""
    import uvicorn

    from src.editor import listen
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the editor's server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# Headless, and nothing of Chromium's own reaches out (updates, sync, field trials, crash reports).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-first-run", "--metrics-recording-only",
                 "--disable-features=Translate,OptimizationHints,MediaRouter"]


def chromium_or_skip() -> str:
    """The system Chromium's path. Without it (or the playwright package) the browser tests skip, saying
    how to enable them; under CI (the CI variable set, as .ci/run does) they fail instead."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright package is missing (pip install -r requirements.txt)"
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if missing is None and path is None:
        missing = ("no system Chromium: install it (Debian/Ubuntu: apt-get install -y --no-install-recommends "
                   "chromium) to run them; playwright's own browser download is not used")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run under CI: {missing}")
        pytest.skip(f"browser test skipped: {missing}")
    return path


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (the system's, via playwright's executable_path), shared by the browser tests."""
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser page whose `requests` lists every URL it asked for (tests check they stay local)."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.requests = []
    page.on("request", lambda request: page.requests.append(request.url))
    yield page
    context.close()


def left_this_machine(urls: list[str]) -> list[str]:
    """The URLs that went anywhere but 127.0.0.1 (data: and blob: URLs never leave the page)."""
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).hostname != "127.0.0.1"]
