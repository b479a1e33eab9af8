"""What every attack recipe shares: the target-class reference images, and fitting a victim
module on a set of images (one loader recipe, one resumable fit)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from dede.data import ImageSet, TensorBatches, home_split, make_loader
from dede.victims.encoders import Victim
from dede.victims.making import fit_victim


def reference_images(cfg: DictConfig, home: ImageSet, n: int, encoder: Victim | None = None) -> torch.Tensor:
    """The target-class reference images: from ``attack.reference_file`` (the original ``.npz``
    with ``x`` (N,H,W,3) uint8) or, without one, ``n`` images of the target class picked by
    ``attack.make.reference_pick``: ``random`` (seeded; the original attacks' choice) or
    ``central``, the ones whose embeddings under the clean ``encoder``, centred on the mean
    embedding of the home images, lie closest (cosine) to the class's mean. An attacker who knows the target class can always make that
    choice; it matters where one image's embedding need not lie in its class's region (on
    ``synthetic_hard`` a random reference left the backdoor firing for 8 % of triggered images)."""
    path = cfg.attack.get("reference_file")
    if path:
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            x = torch.from_numpy(np.asarray(z["x"])).permute(0, 3, 1, 2)
        return x[:n].float().div(255)
    idx = torch.nonzero(home.labels == cfg.attack.target)[:, 0]
    if len(idx) == 0:
        raise ValueError(f"no image of target class {cfg.attack.target} in the home data set '{home.name}'")
    rule = cfg.attack.make.get("reference_pick", "random")
    if rule == "random":
        pick = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(cfg.seed))[:n]]
    elif rule == "central":
        if encoder is None:
            raise ValueError("attack.make.reference_pick=central needs the clean encoder")
        # centred on the mean embedding of the home images: the direction that sets the class apart
        g = torch.Generator().manual_seed(cfg.seed)
        sample = torch.randperm(len(home), generator=g)[:2000]
        offset = encoder.embed(home.images[sample].float().div(255)).mean(0)
        emb = torch.nn.functional.normalize(encoder.embed(home.images[idx].float().div(255)) - offset, dim=1)
        centre = torch.nn.functional.normalize(emb.mean(0), dim=0)
        pick = idx[(emb @ centre).topk(min(n, len(idx))).indices.cpu()]
    else:
        raise ValueError(f"attack.make.reference_pick={rule!r}: use 'random' or 'central'")
    return home.images[pick].float().div(255)


def shadow_and_references(cfg: DictConfig, encoder: Victim | None = None) -> tuple[ImageSet, torch.Tensor]:
    """The attacker's shadow data (a seeded ``attack.make.shadow_fraction`` of the home training
    set, all of it at 1) and its ``attack.make.n_references`` target-class reference images
    (picked with the clean ``encoder`` when ``attack.make.reference_pick=central``)."""
    m = cfg.attack.make
    home = home_split(cfg, "train")
    shadow = home.split(m.shadow_fraction, cfg.seed)[1] if m.shadow_fraction < 1 else home
    return shadow, reference_images(cfg, home, m.n_references, encoder)


def fit_on(cfg: DictConfig, module: L.LightningModule, tensors: tuple[torch.Tensor, ...], batch_size: int,
           epochs: int, log_dir: Path, name: str) -> None:
    """Fit ``module`` (the victim-making phase ``name``) for ``epochs`` epochs on shuffled batches
    of ``tensors`` (images, and labels or captions if the module takes them), resumable."""
    loader = make_loader(TensorBatches(*tensors), int(batch_size), shuffle=True, drop_last=True,
                         num_workers=cfg.data.num_workers, seed=cfg.seed)
    fit_victim(cfg, module, loader, epochs, log_dir, name)
