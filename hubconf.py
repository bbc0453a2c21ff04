"""torch.hub entry points (https://pytorch.org/docs/stable/hub.html).

    import torch
    model = torch.hub.load("path/to/this/repo", "celeba64", source="local")
    faces = model.sample(16)                        # (16, 3, 64, 64) in [0, 1], from the GMM sampler
    edited = model.edit(model.photo("me.jpg"), "Smiling")

What the model offers: src/hub.py. What it is and how it was trained: docs/model-card.md.
"""

dependencies = ["torch", "torchvision", "numpy", "sklearn", "PIL"]

from src.hub import FaceModel  # noqa: E402
from src.pretrained import SHIPPED  # noqa: E402


def celeba64(path: str | None = None) -> FaceModel:
    """The face model that ships with the repo (pretrained/celeba64.pt; or another pretrained file at
    `path`), checked against its recorded SHA-256, ready to encode, decode, sample and edit."""
    return FaceModel.load(path or SHIPPED)
