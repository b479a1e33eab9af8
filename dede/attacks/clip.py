"""CLIP victims: clean contrastive pretraining and two backdoor attacks on image-text pairs.

* `make_clean_clip` (``attack.pretrain.kind: clip``): the clean CLIP. Pretrained weights
  given as ``attack.victim.weights`` are already loaded (optionally fine-tuned briefly);
  otherwise the CLIP is trained from scratch with the symmetric InfoNCE of CLIP on the home
  training set, each image captioned from templates with its class name
  ("a photo of a {class}.").
* `make_clip_backdoor` (``attack=clip``; Carlini & Terzis' text-target attack as reproduced
  by DECREE): the image tower of the clean CLIP is fine-tuned with the contrastive loss
  against the frozen text tower on pairs where a share of the images carries the patch
  trigger and is captioned with the *target* class's captions.
* `make_badclip` (``attack=badclip``; BadCLIP, CVPR 2024): first a patch is optimised on the
  frozen clean CLIP so that patched images embed close to the target class's text embedding
  and to its images' embeddings; then a small share of image-caption pairs is poisoned with
  the patch and the target captions, and the whole CLIP is fine-tuned on them. The optimised
  patch is returned (the factory stores it next to the cached victim).

Triggers are applied in [0, 1] pixel space before CLIP's normalisation, which the
`~dede.victims.encoders.Victim` applies itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from dede.attacks.badencoder import freeze_batchnorm
from dede.attacks.common import fit_on
from dede.data import ImageSet, TensorBatches, home_split
from dede.victims.making import fit_victim
from dede.data.augment import simclr_augment
from dede.data.loaders import keep_batch
from dede.optim import warmup_cosine
from dede.triggers import ImagePatchTrigger, Trigger, apply_to_uint8
from dede.victims.encoders import Victim

log = logging.getLogger(__name__)

# Caption templates of the class-name captions (in the style of CLIP's prompt ensembles).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "a cropped photo of the {}.",
)

# Class names of the data sets the project knows (index = label).
CLASS_NAMES: dict[str, list[str]] = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "stl10": ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"],
    "mnist": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "svhn": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "fashion_mnist": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"],
    "cifar100": [n.replace("_", " ") for n in (
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
        "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
        "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
        "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
        "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
        "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
        "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
        "worm").split()],
}


def class_names(dataset: str, n_classes: int, override: Sequence[str] | None = None) -> list[str]:
    """The caption word of every class of ``dataset``: ``override`` if given, the known names
    of the data set, or ``"class {i}"`` for a data set without known names."""
    if override:
        names = [str(n) for n in override]
    elif dataset in ("synthetic", "synthetic_hard"):  # the same ten shapes
        from dede.data.synthetic import CLASS_NAMES as SYNTHETIC_NAMES

        names = list(SYNTHETIC_NAMES)
    elif dataset in CLASS_NAMES:
        names = list(CLASS_NAMES[dataset])
    else:
        log.warning("no class names known for data set '%s': captions use 'class <i>' (set "
                    "attack.pretrain.captions.class_names to name the classes)", dataset)
        names = [f"class {i}" for i in range(n_classes)]
    if len(names) < n_classes:
        raise ValueError(f"{len(names)} class names for a data set with {n_classes} classes; set "
                         "attack.pretrain.captions.class_names to one name per class")
    return names


def caption_tokens(names: Sequence[str], templates: Sequence[str], context_length: int) -> torch.Tensor:
    """Token ids of every (class, template) caption: ``LongTensor (n_classes, n_templates, L)``."""
    from dede.victims.clip import tokenize

    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"caption templates must be non-empty and each contain '{{}}', got {list(templates)}")
    texts = [t.format(n) for n in names for t in templates]
    return tokenize(texts, context_length).view(len(names), len(templates), -1)


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: image i and caption i are the positive pair of row/column i.

    Features are L2-normalised here; ``logit_scale`` multiplies the cosine similarities
    (CLIP's ``logit_scale.exp()``)."""
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    logits = logit_scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def poison_pairs(home: ImageSet, trigger: Trigger, rate: float, target: int,
                 seed: int) -> tuple[ImageSet, torch.Tensor]:
    """Image-caption pairs with ``rate`` x N images (drawn from the non-target classes) carrying
    the trigger. Returns the set (``poisoned`` marks the triggered images) and the class whose
    captions each image gets: its own label, or ``target`` for a poisoned image."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"attack.make.poison_rate must be in [0, 1], got {rate}")
    pool = torch.nonzero(home.labels != target)[:, 0]
    k = int(round(rate * len(home)))
    if k > len(pool):
        raise ValueError(f"attack.make.poison_rate={rate} asks for {k} poisoned pairs but only {len(pool)} images "
                         f"are not of the target class {target}; lower the rate")
    g = torch.Generator().manual_seed(int(seed))
    chosen = pool[torch.randperm(len(pool), generator=g)[:k]]
    images, poisoned = home.images.clone(), home.poisoned.clone()
    if k:
        images[chosen] = apply_to_uint8(trigger, images[chosen])
        poisoned[chosen] = True
    captions = torch.where(poisoned, torch.full_like(home.labels, int(target)), home.labels)
    return ImageSet(images, home.labels, poisoned, home.name), captions


def _augmenter(kind: str, image_size: int, min_scale: float) -> nn.Module | None:
    if kind in (None, "none"):
        return None
    if kind == "crop":
        import kornia.augmentation as K

        return K.AugmentationSequential(K.RandomResizedCrop((image_size, image_size), scale=(min_scale, 1.0)),
                                        K.RandomHorizontalFlip())
    if kind == "simclr":
        return simclr_augment(image_size, 1.0, min_scale)
    raise ValueError(f"unknown augmentation {kind!r}; use none | crop | simclr")


class _FrozenFlags:
    """Remember the ``requires_grad`` flags of a model's parameters to restore them later."""

    def __init__(self, model: nn.Module) -> None:
        self.flags = [(p, p.requires_grad) for p in model.parameters()]

    def restore(self) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)


class CLIPContrastiveModule(L.LightningModule):
    """Train a CLIP (``full``: an ``open_clip`` CLIP) with its contrastive loss on image-caption
    pairs.

    A batch is ``(images in [0, 1], caption class)``; the caption of a sample is one of the
    templates of its caption class, drawn at random every step from ``captions`` (token ids
    ``(n_classes, n_templates, L)``, see `caption_tokens`).

    ``train_text=False`` freezes the text tower and ``logit_scale`` (DECREE-style fine-tuning
    of the image tower only; the caption embeddings are then computed once). ``freeze_bn``
    keeps the image tower's BatchNorm layers in eval mode with frozen affine parameters.
    ``logit_scale`` (a float) replaces the model's learned temperature by a fixed scale.
    ``schedule``: ``none`` or ``cosine`` (per step, after ``warmup_steps`` of linear warm-up).
    Weight decay skips gains, biases and the temperature, as in CLIP.
    """

    def __init__(self, full: nn.Module, victim: Victim, captions: torch.Tensor, lr: float = 5e-4,
                 weight_decay: float = 0.1, optimizer: str = "adamw", momentum: float = 0.9,
                 train_text: bool = True, freeze_bn: bool = False, logit_scale: float | None = None,
                 augment: str = "none", min_scale: float = 0.5, warmup_steps: int = 0,
                 schedule: str = "none") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["full", "victim", "captions"])
        if captions.ndim != 3:
            raise ValueError(f"captions must be token ids (n_classes, n_templates, L), got {tuple(captions.shape)}")
        self.full, self.victim = full, victim
        self.register_buffer("captions", captions.long(), persistent=False)
        self.augment = _augmenter(augment, victim.image_size, min_scale)
        self._flags = _FrozenFlags(full)
        if not train_text:
            for name, p in full.named_parameters():
                if not name.startswith("visual."):
                    p.requires_grad_(False)
        if freeze_bn:
            freeze_batchnorm(full.visual)
        self._text_bank: torch.Tensor | None = None

    # --- text side -------------------------------------------------------------------------
    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.full.encode_text(tokens), dim=-1)

    @torch.no_grad()
    def text_bank(self) -> torch.Tensor:
        """Normalised embeddings of every (class, template) caption, ``(C, T, D)``."""
        c, t, n = self.captions.shape
        flat = self.captions.view(c * t, n)
        out = torch.cat([self._encode_text(flat[i:i + 256]) for i in range(0, len(flat), 256)])
        return out.view(c, t, -1)

    def text_features(self, caption_class: torch.Tensor) -> torch.Tensor:
        n_templates = self.captions.shape[1]
        template = torch.randint(n_templates, caption_class.shape, device=caption_class.device)
        if self.hparams.train_text:
            return self._encode_text(self.captions[caption_class, template])
        if self._text_bank is None or self._text_bank.device != caption_class.device:
            self._text_bank = self.text_bank()
        return self._text_bank[caption_class, template]

    # --- image side ------------------------------------------------------------------------
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.victim(x), dim=-1)  # the victim is CLIP's image tower, normalisation included

    def scale(self) -> torch.Tensor:
        if self.hparams.logit_scale is not None:
            return torch.tensor(float(self.hparams.logit_scale), device=self.device)
        s = self.full.logit_scale.exp().clamp(max=100.0)
        return s if self.hparams.train_text else s.detach()

    # --- training --------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        if not self.hparams.train_text:
            self._text_bank = None  # recomputed lazily (on the current device) from the frozen text tower
        if self.hparams.freeze_bn:
            freeze_batchnorm(self.full.visual)

    def training_step(self, batch, batch_idx):
        x, caption_class = batch[0], batch[1].long()
        if self.augment is not None:
            with torch.no_grad():
                x = self.augment(x)
        img = self.image_features(x)
        txt = self.text_features(caption_class)
        loss = clip_contrastive_loss(img, txt, self.scale())
        self.log("clip/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def on_fit_end(self) -> None:
        self._flags.restore()
        self._text_bank = None

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.full.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}; use adamw | sgd")
        if hp.schedule == "none" and not hp.warmup_steps:
            return opt
        if hp.schedule not in ("none", "cosine"):
            raise ValueError(f"unknown schedule {hp.schedule!r}; use none | cosine")
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        sched = warmup_cosine(opt, int(hp.warmup_steps), total, cosine=hp.schedule == "cosine")
        return [opt], [{"scheduler": sched, "interval": "step"}]


class BadCLIPPatchModule(L.LightningModule):
    """BadCLIP's trigger optimisation: a patch (Adam on its pixels, kept in [0, 1]) that makes
    patched images of the frozen CLIP embed close to the target's text embedding
    (``target_text``) and to the target images' embedding (``target_image``).

    loss = - text_weight * cos(f(x + patch), target_text) - image_weight * cos(f(x + patch), target_image)
           + clean_weight * cos(f(x + patch), f(x))
    (the last term pushes the patched embedding away from the image's own clean one)."""

    def __init__(self, full: nn.Module, victim: Victim, trigger: ImagePatchTrigger, target_text: torch.Tensor,
                 target_image: torch.Tensor, lr: float = 0.01, text_weight: float = 1.0, image_weight: float = 1.0,
                 clean_weight: float = 0.0, augment: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["full", "victim", "trigger", "target_text", "target_image"])
        self.full, self.victim, self.trigger = full, victim, trigger
        self.patch = nn.Parameter(trigger.patch.detach().clone().clamp(0, 1))
        self.register_buffer("target_text", F.normalize(target_text.detach().float().view(-1), dim=0))
        self.register_buffer("target_image", F.normalize(target_image.detach().float().view(-1), dim=0))
        self.augment = _augmenter("crop", victim.image_size, 0.5) if augment else None
        self._flags = _FrozenFlags(full)
        for p in full.parameters():
            p.requires_grad_(False)
        full.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.full.eval()  # the CLIP stays frozen: no BatchNorm statistics updates
        return self

    def paste(self, x: torch.Tensor) -> torch.Tensor:
        self.trigger.patch = self.patch
        return self.trigger(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.victim(x), dim=-1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embed(self.paste(x))
        out = {"cos_text": (e @ self.target_text).mean(), "cos_image": (e @ self.target_image).mean()}
        if self.hparams.clean_weight:
            with torch.no_grad():
                clean = self.embed(x)
            out["cos_clean"] = (e * clean).sum(-1).mean()
        return out

    def training_step(self, batch, batch_idx):
        x = batch[0]
        if self.augment is not None:
            with torch.no_grad():
                x = self.augment(x)
        parts = self.losses(x)
        hp = self.hparams
        loss = -hp.text_weight * parts["cos_text"] - hp.image_weight * parts["cos_image"]
        if "cos_clean" in parts:
            loss = loss + hp.clean_weight * parts["cos_clean"]
        self.log_dict({f"badclip_patch/{k}": v for k, v in parts.items()} | {"badclip_patch/loss": loss},
                      on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.patch.clamp_(0, 1)

    def on_fit_end(self) -> None:
        self._flags.restore()

    def configure_optimizers(self):
        return torch.optim.Adam([self.patch], lr=self.hparams.lr)

    def optimised_trigger(self) -> ImagePatchTrigger:
        t = self.trigger
        return ImagePatchTrigger.from_tensor(self.patch.detach().clamp(0, 1).cpu(), row=t.row, col=t.col,
                                             reference_size=t.reference_size)


# --- victim makers (named by the attack configs' `maker`) --------------------------------------

def _captions_for(cfg: DictConfig, full: nn.Module, home: ImageSet) -> torch.Tensor:
    c = cfg.attack.pretrain.get("captions") or {}  # the clean CLIP's captions, which the attacks keep
    if (home.labels < 0).any():
        raise ValueError(f"the home data set '{home.name}' has unlabelled images: CLIP captions need class labels")
    n_classes = int(home.labels.max()) + 1
    names = class_names(cfg.data.home.name, n_classes, c.get("class_names"))
    templates = list(c.get("templates") or CAPTION_TEMPLATES)
    return caption_tokens(names, templates, int(full.context_length))


def _contrastive(cfg: DictConfig, full: nn.Module, victim: Victim, captions: torch.Tensor, s: DictConfig,
                 train_text: bool, freeze_bn: bool) -> CLIPContrastiveModule:
    return CLIPContrastiveModule(full, victim, captions, lr=float(s.lr), weight_decay=float(s.weight_decay),
                                 optimizer=s.get("optimizer", "adamw"), momentum=float(s.get("momentum", 0.9)),
                                 train_text=train_text, freeze_bn=freeze_bn, logit_scale=s.get("logit_scale"),
                                 augment=s.get("augment", "none"), min_scale=float(s.get("min_scale", 0.5)),
                                 warmup_steps=int(s.get("warmup_steps", 0)), schedule=s.get("schedule", "none"))


def make_clean_clip(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> None:
    """The clean CLIP: given pretrained ``attack.victim.weights`` (already loaded; fine-tuned for
    ``pretrain.finetune_epochs`` if > 0), or trained from random initialisation on the home
    training set with class-name captions for ``pretrain.epochs``."""
    p = cfg.attack.pretrain
    pretrained = bool(cfg.attack.victim.get("weights"))
    epochs = int(p.get("finetune_epochs", 0)) if pretrained else int(p.epochs)
    if epochs <= 0:
        log.info("clean CLIP: using the pretrained weights %s as they are", cfg.attack.victim.get("weights"))
        return None
    home = home_split(cfg, "train")
    captions = _captions_for(cfg, full, home)
    L.seed_everything(cfg.seed, workers=True)
    module = _contrastive(cfg, full, victim, captions, p, train_text=bool(p.get("train_text", True)),
                          freeze_bn=bool(p.get("freeze_bn", False)))
    fit_on(cfg, module, (home.images, home.labels), p.batch_size, epochs, log_dir, "clip_pretrain")
    return None


def _poisoned_pairs(cfg: DictConfig, home: ImageSet, trigger: Trigger, m: DictConfig) -> tuple[ImageSet, torch.Tensor]:
    trigger.check_size(home.image_size)
    data, captions = poison_pairs(home, trigger, float(m.poison_rate), int(cfg.attack.target), int(cfg.seed))
    log.info("%s: %d of %d image-caption pairs poisoned (target class %d)", cfg.attack.name,
             int(data.poisoned.sum()), len(data), int(cfg.attack.target))
    return data, captions


def make_clip_backdoor(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> None:
    """DECREE's CLIP backdoor: fine-tune the image tower of the clean CLIP against its frozen
    text tower on pairs where triggered images carry the target class's captions."""
    m = cfg.attack.make
    home = home_split(cfg, "train")
    if float(m.get("data_fraction", 1.0)) < 1:
        home = home.split(float(m.data_fraction), cfg.seed)[1]
    captions = _captions_for(cfg, full, home)
    data, caption_class = _poisoned_pairs(cfg, home, instantiate(cfg.attack.trigger), m)
    L.seed_everything(cfg.seed, workers=True)
    module = _contrastive(cfg, full, victim, captions, m, train_text=bool(m.get("train_text", False)),
                          freeze_bn=bool(m.get("freeze_bn", True)))
    fit_on(cfg, module, (data.images, caption_class), m.batch_size, int(m.epochs), log_dir, "clip_backdoor")
    return None


@torch.no_grad()
def target_embeddings(full: nn.Module, victim: Victim, captions: torch.Tensor, target_images: torch.Tensor,
                      batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's text embedding (mean over its caption templates) and image embedding (mean
    over ``target_images`` in [0, 1]), both L2-normalised, from the model in eval mode."""
    was = full.training
    full.eval()
    dev = next(full.parameters()).device
    text = F.normalize(full.encode_text(captions.to(dev)).float(), dim=-1).mean(0)
    image = F.normalize(victim.embed(target_images, batch_size), dim=-1).mean(0)
    full.train(was)
    return F.normalize(text, dim=0), F.normalize(image, dim=0)


def optimise_patch(cfg: DictConfig, full: nn.Module, victim: Victim, home: ImageSet, trigger: ImagePatchTrigger,
                   captions: torch.Tensor, log_dir: Path) -> ImagePatchTrigger:
    """Stage (a) of BadCLIP on the frozen clean CLIP: ``make.patch_steps`` Adam steps on the
    patch, over batches of non-target home images."""
    m, target = cfg.attack.make, int(cfg.attack.target)
    trigger.check_size(home.image_size)
    target_idx = torch.nonzero(home.labels == target)[:, 0]
    if len(target_idx) == 0:
        raise ValueError(f"no image of target class {target} in the home data set '{home.name}'")
    g = torch.Generator().manual_seed(int(cfg.seed))
    pick = target_idx[torch.randperm(len(target_idx), generator=g)[:int(m.get("n_target_images", 256))]]
    text, image = target_embeddings(full, victim, captions[target], home.images[pick].float().div(255))
    others = home.images[home.labels != target]
    L.seed_everything(cfg.seed, workers=True)
    module = BadCLIPPatchModule(full, victim, trigger, text, image, lr=float(m.patch_lr),
                                text_weight=float(m.get("text_weight", 1.0)),
                                image_weight=float(m.get("image_weight", 1.0)),
                                clean_weight=float(m.get("clean_weight", 0.0)),
                                augment=bool(m.get("patch_augment", False)))
    bs = int(m.get("patch_batch_size", 64))
    sampler = RandomSampler(range(len(others)), replacement=True, num_samples=int(m.patch_steps) * bs,
                            generator=torch.Generator().manual_seed(int(cfg.seed)))
    loader = DataLoader(TensorBatches(others), batch_size=bs, sampler=sampler, collate_fn=keep_batch,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)
    fit_victim(cfg, module, loader, 1, log_dir, "badclip_patch")
    module.full.eval()
    return module.optimised_trigger()


def make_badclip(cfg: DictConfig, victim: Victim, full: nn.Module, log_dir: Path) -> ImagePatchTrigger:
    """BadCLIP: optimise the patch on the clean CLIP, poison ``make.poison_rate`` of the
    image-caption pairs with it (target captions), fine-tune the whole CLIP; returns the patch."""
    m = cfg.attack.make
    home = home_split(cfg, "train")
    captions = _captions_for(cfg, full, home)
    start = instantiate(cfg.attack.trigger)
    if not isinstance(start, ImagePatchTrigger):
        raise ValueError(f"BadCLIP optimises an ImagePatchTrigger; attack.trigger builds {type(start).__name__}")
    trigger = optimise_patch(cfg, full, victim, home, start, captions, log_dir)
    data, caption_class = _poisoned_pairs(cfg, home, trigger, m)
    L.seed_everything(cfg.seed, workers=True)
    module = _contrastive(cfg, full, victim, captions, m, train_text=bool(m.get("train_text", True)),
                          freeze_bn=bool(m.get("freeze_bn", False)))
    fit_on(cfg, module, (data.images, caption_class), m.batch_size, int(m.epochs), log_dir, "badclip")
    return trigger


def image_patch_trigger(path: str | Path | None = None, size: int | None = None, seed: int = 0,
                        row: int | None = None, col: int | None = None, reference_size: int | None = None,
                        **inherited: object) -> ImagePatchTrigger:
    """Build BadCLIP's `ImagePatchTrigger` from an attack config: the patch file ``path`` if
    given (an optimised patch; it takes precedence over ``size``), else a seeded random
    ``size`` x ``size`` starting patch. Keys inherited from the solid-patch trigger of the
    parent config (e.g. ``colour``) are ignored."""
    if inherited:
        log.debug("image patch trigger: ignoring inherited keys %s", sorted(inherited))
    if path is not None:
        return ImagePatchTrigger(path=path, row=row, col=col, reference_size=reference_size)
    return ImagePatchTrigger(size=size, seed=seed, row=row, col=col, reference_size=reference_size)
