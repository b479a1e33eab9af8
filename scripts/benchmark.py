"""Throughput of DeDe decoder training and scoring, with and without the embedding cache.

    python scripts/benchmark.py                  # CPU-sized victim and decoder (the embedded default)
    python scripts/benchmark.py --size paper     # CIFAR ResNet-18 victim, decoder 192 wide, depths 12 + 4
    python scripts/benchmark.py --device cuda --precision bf16

Training: images/second of full optimisation steps (forward, backward, Adam) when the victim
embeddings come from the cache vs when the frozen victim runs on every batch (what the
original code did every epoch). Scoring: images/second of batched scoring at the test mask
ratio vs a per-image loop. Prints a table and writes JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dede.decoder import DeDeModel
from dede.detect import dede_scores
from dede.victims import build_victim

SIZES = {
    "tiny": dict(victim=dict(width=16, blocks=(1, 1, 1, 1)), decoder=dict(embed_dim=128, depth=4, num_heads=4,
                                                                             decoder_depth=2)),
    "paper": dict(victim=dict(width=64, blocks=(2, 2, 2, 2)), decoder=dict(embed_dim=192, depth=12, num_heads=3,
                                                                              decoder_depth=4)),
}


def timed(fn, n_images: int, warmup: int, steps: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return n_images * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16", "16"], default="32")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--test-mask-ratio", type=float, default=0.99)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]
    size = SIZES[args.size]
    victim, _ = build_victim("simclr_resnet", [0.5] * 3, [0.25] * 3, 32, **size["victim"])
    victim = victim.to(dev).eval()
    model = DeDeModel(victim.embed_dim, 32, 4, **size["decoder"]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = args.batch_size
    x = torch.rand(b, 3, 32, 32, device=dev)
    with torch.no_grad():
        cached = victim(x)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    def step(use_cache: bool):
        with autocast():
            if use_cache:
                emb = cached
            else:
                with torch.no_grad():
                    emb = victim(x)
            pred, mask = model(x, emb, args.mask_ratio)
            loss = model.loss(x, pred, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res = {"size": args.size, "device": str(dev), "precision": args.precision, "batch_size": b,
           "threads": torch.get_num_threads()}
    res["train_images_per_s_cached"] = timed(lambda: step(True), b, 1, args.steps, sync)
    res["train_images_per_s_uncached"] = timed(lambda: step(False), b, 1, args.steps, sync)

    n_score = 4 * b
    xs = torch.rand(n_score, 3, 32, 32)
    model.eval()
    with autocast():
        res["score_images_per_s_batched"] = timed(
            lambda: dede_scores(model, victim, xs, args.test_mask_ratio, batch_size=512), n_score, 1, 2, sync)
        res["score_images_per_s_batched_cached"] = timed(
            lambda: dede_scores(model, victim, xs, args.test_mask_ratio, batch_size=512, embeddings=cached.repeat(4, 1)),
            n_score, 1, 2, sync)
        per_image = xs[:64]
        res["score_images_per_s_per_image_loop"] = timed(
            lambda: [dede_scores(model, victim, per_image[i:i + 1], args.test_mask_ratio) for i in range(64)],
            64, 0, 1, sync)
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.1f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
