"""An optimised, sample-specific full-image trigger: a small generator adds a bounded
perturbation that depends on the image,

    x' = clamp(x + eps * tanh(P + G(x)), 0, 1),   so ||x' - x||_inf <= eps,

with ``G`` a small fully convolutional net (input-aware part) and ``P`` a learned
``(3, image_size, image_size)`` map (the part shared by all images). Both are optimised by the
attack (`dede.attacks.sample_specific`); the result is saved next to the victim and loaded
back from that file (``path``) for evaluation, like BadCLIP's optimised patch.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dede.triggers.patch import Trigger

FORMAT = "dede.generator_trigger.v1"
CHUNK = 512  # images per generator pass when triggering a whole data set


class PerturbationNet(nn.Module):
    """``P + G(x)`` before the tanh: a ``depth``-layer 3x3 conv net of ``width`` channels plus a
    learned map ``P`` of the image size."""

    def __init__(self, width: int, depth: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
            c = width
        layers.append(nn.Conv2d(c, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.shared = nn.Parameter(torch.zeros(3, image_size, image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared + self.net(x * 2 - 1)


class GeneratorTrigger(Trigger):
    """A bounded input-aware perturbation on [0, 1] images ``(B, 3, image_size, image_size)``.

    Args:
        eps: the L_inf bound of the perturbation (in [0, 1] pixel units).
        width, depth: the conv net's channels and layers (depth >= 1).
        image_size: the resolution of the learned map ``P`` (the victim's).
        seed: the initial weights' seed (an untrained generator is a seeded random one).
        path: a file written by `save`: the trained generator (its settings must match these).
    """

    name = "generator"

    def __init__(self, eps: float = 8 / 255, width: int = 16, depth: int = 3, image_size: int = 32, seed: int = 0,
                 path: str | os.PathLike | None = None) -> None:
        self.eps, self.width, self.depth = float(eps), int(width), int(depth)
        self.image_size, self.seed = int(image_size), int(seed)
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"generator trigger attack.trigger.eps={eps} must be in [0, 1] (an L_inf bound on [0, 1] "
                             "pixels, e.g. 8/255 = 0.0314)")
        if self.depth < 1 or self.width < 1 or self.image_size < 1:
            raise ValueError(f"generator trigger needs depth, width and image_size >= 1, got depth={depth}, "
                             f"width={width}, image_size={image_size}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = PerturbationNet(self.width, self.depth, self.image_size)
            # a random start: a seeded shared map so that an untrained generator is not the identity
            nn.init.normal_(self.net.shared, std=1.0)
        self.net.eval()
        self.path = None if path is None else Path(path)
        if path is not None:
            self._load(Path(path))

    # --- file ------------------------------------------------------------------------------
    def settings(self) -> dict:
        return {"eps": self.eps, "width": self.width, "depth": self.depth, "image_size": self.image_size}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the generator (weights and settings) as a ``.pt`` file."""
        path = Path(path)
        if path.suffix.lower() not in (".pt", ".pth"):
            raise ValueError(f"{path}: a generator trigger is saved as .pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        torch.save({"format": FORMAT, "settings": self.settings(), "state_dict": state}, path)
        return path

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"generator trigger file not found: {path} (attack.trigger.path)")
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"{path} is not a generator trigger file (expected format {FORMAT!r})")
        saved, mine = obj["settings"], self.settings()
        diff = {k: (saved[k], mine[k]) for k in mine if abs(float(saved[k]) - float(mine[k])) > 1e-9}
        if diff:
            raise ValueError(f"{path} was made with other generator settings than attack.trigger: "
                             + ", ".join(f"{k}: file {a} vs config {b}" for k, (a, b) in diff.items())
                             + "; set attack.trigger.<key> to the file's values")
        self.net.load_state_dict(obj["state_dict"])

    # --- applying --------------------------------------------------------------------------
    def check_size(self, image_size: int) -> None:
        if int(image_size) != self.image_size:
            raise ValueError(f"generator trigger was made for {self.image_size}x{self.image_size} images but images "
                             f"are {image_size}x{image_size}; set attack.trigger.image_size to the victim's size")

    def perturbation(self, x: torch.Tensor) -> torch.Tensor:
        """``eps * tanh(P + G(x))`` (differentiable in the generator's parameters)."""
        net = self.net.to(x.device)
        return self.eps * torch.tanh(net(x.float())).to(x.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"generator trigger expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        self.check_size(x.shape[-1])
        if torch.is_grad_enabled() or len(x) <= CHUNK:
            return (x + self.perturbation(x)).clamp(0, 1)
        return torch.cat([(c + self.perturbation(c)).clamp_(0, 1) for c in x.split(CHUNK)])

    def __repr__(self) -> str:
        return f"GeneratorTrigger({self.settings()}, seed={self.seed}, path={self.path})"
