"""A pretrained face model ready to use from Python: encode, decode, sample and edit, no dataset needed.

    model = torch.hub.load("path/to/this/repo", "celeba64", source="local")   # hubconf.py
    faces = model.sample(16, seed=0)                                         # (16, 3, 64, 64) in [0, 1]
    x = model.photo("me.jpg")                                                # found, aligned like CelebA
    smiling = model.edit(x, "Smiling")                                       # to p = 0.999 of smiling

Images are float tensors in [0, 1], (N, 3, S, S), on the CPU; codes are (N, latent_dim).
"""

from pathlib import Path

import torch

from src.editing import DEFAULT_METHOD, DEFAULT_TARGET, Edit, edited
from src.faces import model_input, open_photo, trained_on_aligned_faces
from src.images import to_float
from src.latent import decode, latent_codes, posterior_means
from src.pretrained import Pretrained, load_pretrained


class FaceModel:
    """A pretrained file's model with its GMM sampler and attribute directions (src/pretrained.py)."""

    def __init__(self, pretrained: Pretrained):
        self.pretrained = pretrained
        self.vae, self.cfg = pretrained.model, pretrained.cfg

    @classmethod
    def load(cls, path: str | Path) -> "FaceModel":
        return cls(load_pretrained(path))

    @property
    def attributes(self) -> list[str]:
        """The attributes edit() can add or remove."""
        return list(self.pretrained.attrs.names)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means of images in [0, 1]: (N, latent_dim)."""
        return posterior_means(self.vae, images)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return decode(self.vae, codes)

    def sample(self, n: int, seed: int = 0, sampler: str = "gmm", temperature: float = 1.0) -> torch.Tensor:
        """n faces from the GMM sampler fitted to the training codes (or the prior N(0, I))."""
        return self.decode(latent_codes(sampler, n, self.vae.latent_dim, seed, self.pretrained.gmm, temperature))

    def photo(self, path: str | Path, align: bool | None = None) -> torch.Tensor:
        """A photo as the model's input (1, 3, S, S): its face found and aligned like CelebA (align None:
        as the model's training images were), else its centre."""
        align = trained_on_aligned_faces(self.cfg.data) if align is None else align
        array, _ = model_input(open_photo(path), str(path), self.cfg.data.image_size, self.cfg.data.center_crop, align)
        return to_float(array[None])

    def edit(self, images: torch.Tensor, attribute: str, add: bool = True, target: float = DEFAULT_TARGET,
             method: str = DEFAULT_METHOD, keep: tuple[str, ...] = ()) -> torch.Tensor:
        """The images with `attribute` added (or removed) until the latent classifier gives it `target`
        (1 - target to remove), along the `method` direction (src/editing.py), keeping `keep`."""
        codes = self.encode(images).double().numpy()
        moved = edited(codes, self.pretrained.attrs, attribute, Edit(method, None, target, tuple(keep)), add)
        return self.decode(torch.from_numpy(moved).float())
