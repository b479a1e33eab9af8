import pytest
import torch

from dede.decoder import DeDeModel, random_masking


def test_random_masking_counts_inverse_and_determinism():
    g = torch.Generator().manual_seed(0)
    keep, restore, mask = random_masking(5, 64, 0.9, "cpu", g)
    assert keep.shape == (5, 6)  # int(64 * 0.1) patches stay visible
    assert torch.all(mask.sum(1) == 58)
    for b in range(5):  # the kept ids are exactly the unmasked positions
        assert set(keep[b].tolist()) == set(torch.nonzero(mask[b] == 0)[:, 0].tolist())
        assert torch.equal(restore[b].argsort(), torch.cat([keep[b], restore[b].argsort()[6:]]))
    assert not torch.equal(mask[0], mask[1])  # a different mask per sample
    _, _, again = random_masking(5, 64, 0.9, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    # the paper's test ratio at 32x32 / patch 4 leaves no visible patch
    k2, _, m2 = random_masking(2, 64, 0.99, "cpu")
    assert k2.shape[1] == 0 and torch.all(m2 == 1)


def tiny_model(**kw):
    return DeDeModel(victim_dim=8, image_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                     decoder_depth=1, **kw)


def test_patchify_roundtrip_and_shapes():
    m = tiny_model()
    x = torch.rand(2, 3, 16, 16)
    p = m.patchify(x)
    assert p.shape == (2, 16, 48)
    assert torch.equal(m.unpatchify(p), x)
    # patch 0 is the top-left 4x4 block, channel-last within the patch
    assert torch.equal(p[0, 0].view(4, 4, 3).permute(2, 0, 1), x[0, :, :4, :4])
    pred, mask = m(x, torch.randn(2, 8), 0.75)
    assert pred.shape == (2, 16, 48) and mask.shape == (2, 16) and torch.all(mask.sum(1) == 12)


def test_loss_is_mse_on_masked_patches_only():
    m = tiny_model()
    x = torch.rand(2, 3, 16, 16)
    target = m.patchify(x)
    mask = torch.zeros(2, 16)
    mask[:, :4] = 1  # 4 masked patches each
    pred = target.clone()
    pred[:, :4] += 0.5  # error on masked patches
    pred[:, 4:] += 3.0  # visible patches must not count
    assert torch.isclose(m.loss(x, pred, mask), torch.tensor(0.25))
    # "MSE over masked patches divided by the mask ratio" is the same number
    per_patch = (pred - target).pow(2).mean(-1)
    assert torch.isclose(m.loss(x, pred, mask), (per_patch * mask).mean() / mask.mean())


def test_victim_embedding_replaces_cls_token_and_changes_output():
    m = tiny_model().eval()
    assert m.victim_proj.bias is None and m.victim_proj.weight.shape == (32, 8)
    x = torch.rand(2, 3, 16, 16)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a, _ = m(x, torch.zeros(2, 8), 0.5, g())
    b, _ = m(x, torch.ones(2, 8), 0.5, g())
    assert not torch.allclose(a, b)


def test_score_sums_squared_error_over_masked_patches():
    m = tiny_model().eval()
    x = torch.rand(3, 3, 16, 16)
    emb = torch.randn(3, 8)
    g = torch.Generator().manual_seed(0)
    pred, mask = m(x, emb, 0.99, torch.Generator().manual_seed(0))
    expected = (pred.clamp(0, 1) - m.patchify(x)).pow(2).sum(-1).mul(mask).sum(-1)
    assert torch.allclose(m.score(x, emb, 0.99, g), expected, atol=1e-5)
    assert torch.all(m.score(x, emb, 0.0) == 0)  # nothing masked: the input is copied
    recon = m.reconstruct(x, pred.clamp(0, 1), mask)
    assert torch.allclose(((recon - x) ** 2).flatten(1).sum(1), expected, atol=1e-5)


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match="does not divide"):
        DeDeModel(victim_dim=8, image_size=32, patch_size=5)


def test_patch_top_rule_and_unknown_rule():
    m = tiny_model().eval()
    x = torch.rand(2, 3, 16, 16)
    emb = torch.randn(2, 8)
    pred, mask = m(x, emb, 0.99, torch.Generator().manual_seed(0))
    err = (pred.clamp(0, 1) - m.patchify(x)).pow(2).sum(-1) * mask
    expected = err.topk(2, dim=-1).values.mean(-1)  # 10 % of 16 patches, rounded: 2
    got = m.score(x, emb, 0.99, torch.Generator().manual_seed(0), rule="patch_top")
    assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown score rule"):
        m.score(x, emb, 0.99, rule="l1")


def test_mixed_and_linear_mask_schedules():
    from dede.decoder import DeDeModule

    kw = dict(model=dict(image_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_depth=1),
              victim_dim=8, mask_ratio=0.75, test_mask_ratio=0.99)
    torch.manual_seed(0)
    mixed = DeDeModule(mask_schedule="mixed", mix_prob=0.5, **kw)
    draws = [mixed.current_mask_ratio() for _ in range(400)]
    assert set(draws) == {0.75, 0.99} and 0.4 < draws.count(0.99) / 400 < 0.6
    assert DeDeModule(mask_schedule="fixed", **kw).current_mask_ratio() == 0.75
