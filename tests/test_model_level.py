import torch
from torch import nn

from dede.detect.metrics import auroc
from dede.detect.model_level import asset_offset_scores, decree_inversion, mean_pairwise_cosine


class ToyEncoder(nn.Module):
    """A random projection of the image; with ``backdoor`` a white 4x4 patch at rows/cols 0..3
    pulls the embedding onto a fixed target vector."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = nn.Parameter(torch.randn(3 * 16 * 16, 32, generator=g) / 16)
        self.target = nn.Parameter(torch.randn(32, generator=g) * 3)
        self.backdoor = backdoor

    def forward(self, x):
        z = (x - 0.3).flatten(1) @ self.proj  # zero-mean: clean embeddings point every which way
        if self.backdoor:
            gate = x[:, :, :4, :4].mean((1, 2, 3)).sub(0.7).mul(10).sigmoid()[:, None]
            z = (1 - gate) * z + gate * self.target
        return z


def test_mean_pairwise_cosine_is_the_off_diagonal_mean():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairs: (1,2) 0, (1,3) 1/sqrt2, (2,3) 1/sqrt2 -> mean of 6 ordered pairs = 2*sqrt2/6... = sqrt2/3
    assert torch.isclose(mean_pairwise_cosine(z), torch.tensor(2 ** 0.5 / 3))


def test_decree_finds_a_small_trigger_only_in_the_backdoored_encoder():
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.6
    bad = decree_inversion(ToyEncoder(True), x, steps=150, lr=0.1)
    clean = decree_inversion(ToyEncoder(False), x, steps=150, lr=0.1)
    assert bad.similarity >= 0.95
    assert bad.mask_l1_norm < 0.5 * clean.mask_l1_norm
    assert bad.verdict(0.1) and not clean.verdict(0.1)
    enc = ToyEncoder(True)
    assert all(p.requires_grad for p in enc.parameters())  # the victim's state is restored


def test_asset_offsets_separate_a_poisoned_cluster():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, 16, generator=g)
    clean_suspect = torch.randn(1000, 16, generator=g)
    poisoned = torch.randn(20, 16, generator=g) * 0.1 + 2.0  # collapsed onto one target point
    s = asset_offset_scores(base, torch.cat([clean_suspect, poisoned]))
    assert auroc(s[:1000], s[1000:]) > 0.95
