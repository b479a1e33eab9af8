"""The DeDe model: an MAE-style patch encoder and decoder (timm transformer blocks) in
which the frozen victim's embedding, projected without bias, takes the place of the CLS
token. Given an image, its victim embedding and a mask ratio it reconstructs every patch."""
from __future__ import annotations

import torch
from einops import rearrange
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn


def random_masking(batch: int, tokens: int, ratio: float, device, generator: torch.Generator | None = None):
    """Vectorised per-sample random masking on the device: ``argsort(rand(B, T))``.

    Returns ``(ids_keep (B, K), ids_restore (B, T), mask (B, T) with 1 = masked)``, where
    ``K = int(T * (1 - ratio))`` patches stay visible.
    """
    keep = int(tokens * (1 - ratio))
    noise = torch.rand(batch, tokens, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = (ids_restore >= keep).float()  # position t is masked iff it comes after the kept ones
    return ids_shuffle[:, :keep], ids_restore, mask


def check_torch_compile() -> None:
    """Compile and run a one-line function; a RuntimeError that says why if that fails (e.g. no
    C++ compiler for the CPU backend, a Python version torch.compile does not support)."""
    try:
        torch.compile(lambda t: torch.nn.functional.gelu(t) * 2)(torch.ones(2))
    except Exception as exc:  # noqa: BLE001 - any failure means the option cannot work here
        raise RuntimeError(f"compiling the DeDe decoder was asked for, but torch.compile does not work here "
                           f"({type(exc).__name__}: {exc}); run without compile") from exc


class DeDeModel(nn.Module):
    def __init__(self, victim_dim: int, image_size: int = 32, patch_size: int = 4, embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 3, decoder_embed_dim: int | None = None,
                 decoder_depth: int = 4, decoder_num_heads: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"decoder.patch_size={patch_size} does not divide the image size {image_size}")
        dd = decoder_embed_dim or embed_dim
        dh = decoder_num_heads or num_heads
        self.patch_size, self.image_size = patch_size, image_size
        self.patch_embed = PatchEmbed(image_size, patch_size, 3, embed_dim)
        n = self.patch_embed.num_patches
        self.num_patches = n
        self.victim_proj = nn.Linear(victim_dim, embed_dim, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, dd))
        self.decoder_blocks = nn.ModuleList([Block(dd, dh, mlp_ratio, qkv_bias=True) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, patch_size * patch_size * 3)
        for p in (self.pos_embed, self.decoder_pos_embed, self.mask_token):
            trunc_normal_(p, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def compile_blocks(self) -> "DeDeModel":
        """``torch.compile`` every transformer block in place (the parameter names stay, so
        checkpoints do not change). Blocks, not the whole model: the token count changes with the
        mask ratio, and identical blocks share one compiled graph. Raises at once, with the
        reason, where torch.compile does not work."""
        check_torch_compile()
        for blk in (*self.blocks, *self.decoder_blocks):
            blk.compile()
        return self

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, h = self.patch_size, self.image_size // self.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, p=p, q=p, c=3)

    def forward(self, images: torch.Tensor, victim_emb: torch.Tensor, mask_ratio: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(pred (B, T, p*p*3) in pixel space, mask (B, T), 1 = masked)``."""
        b = images.shape[0]
        ids_keep, ids_restore, mask = random_masking(b, self.num_patches, mask_ratio, images.device, generator)
        # the token stream in the dtype of the position embedding, also under autocast
        cls = self.victim_proj(victim_emb.to(self.pos_embed.dtype))[:, None].to(self.pos_embed.dtype)
        if ids_keep.shape[1] or torch.is_grad_enabled():
            x = self.patch_embed(images) + self.pos_embed
            x = torch.cat([cls, x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))], dim=1)
        else:  # scoring with no patch visible (the test ratio at 32x32 / patch 4): nothing to embed
            # (a training step still embeds, so that DDP sees the patch embedding used every step)
            x = cls
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        n_mask = self.num_patches - ids_keep.shape[1]
        tokens = self.mask_token.expand(b, n_mask, -1)
        if ids_keep.shape[1]:  # else every token is the mask token: no order to restore
            tokens = torch.cat([x[:, 1:], tokens], dim=1).gather(1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:], mask

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE over the masked patches (their mean, i.e. the sum / (B*T) divided by the mask
        ratio); with nothing masked, the MSE over all patches."""
        per_patch = (pred.float() - self.patchify(images).float()).pow(2).mean(-1)
        masked = mask.sum()
        if masked == 0:
            return per_patch.mean()
        return (per_patch * mask).sum() / masked

    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image the score compares with: visible patches copied from the input."""
        target = self.patchify(images)
        out = torch.where(mask[..., None].bool(), pred.to(target.dtype), target)
        return self.unpatchify(out)

    @torch.no_grad()
    def patch_errors(self, images: torch.Tensor, victim_emb: torch.Tensor, mask_ratio: float,
                     generator: torch.Generator | None = None, n_masks: int = 1) -> torch.Tensor:
        """Squared reconstruction error of every patch, ``(B, T)``, zero where a patch stayed
        visible, averaged over ``n_masks`` random masks (prediction clamped to [0, 1])."""
        total = torch.zeros(images.shape[0], self.num_patches, device=images.device)
        target = self.patchify(images).float()
        for _ in range(n_masks):
            pred, mask = self(images, victim_emb, mask_ratio, generator)
            total += (pred.float().clamp(0, 1) - target).pow(2).sum(-1) * mask
        return total / n_masks

    def reduce_errors(self, errors: torch.Tensor, rule: str = "sse") -> torch.Tensor:
        """One score per image from its patch errors: ``sse`` (the paper) sums them;
        ``patch_top`` averages the worst 10 % of patches, which weighs a local trigger (a patch)
        more than a global colour shift."""
        if rule not in SCORE_RULES:
            raise ValueError(f"unknown score rule {rule!r}; known: {SCORE_RULES}")
        if rule == "sse":
            return errors.sum(-1)
        k = max(1, int(round(0.1 * self.num_patches)))
        return errors.topk(k, dim=-1).values.mean(-1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, victim_emb: torch.Tensor, mask_ratio: float,
              generator: torch.Generator | None = None, n_masks: int = 1, rule: str = "sse") -> torch.Tensor:
        """DeDe score of a batch (high = likely triggered); see `patch_errors` and `reduce_errors`."""
        return self.reduce_errors(self.patch_errors(images, victim_emb, mask_ratio, generator, n_masks), rule)


SCORE_RULES = ("sse", "patch_top")
