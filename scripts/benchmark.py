"""Throughput of DeDe decoder training and scoring, with and without the embedding cache.

    python scripts/benchmark.py                  # CPU-sized victim and decoder (the embedded default)
    python scripts/benchmark.py --size paper     # CIFAR ResNet-18 victim, decoder 192 wide, depths 12 + 4
    python scripts/benchmark.py --size paper --batch-size 256 --parts score
    python scripts/benchmark.py --device cuda --precision bf16

Training (``train``): images/second of full optimisation steps (forward, backward, Adam) when
the victim embeddings come from the cache vs when the frozen victim runs on every batch (what
the original code did every epoch).

Scoring (``score``), in batches of ``--batch-size`` at the test mask ratio: the frozen victim's
forward pass alone, decoder-only scoring from precomputed embeddings, and scoring new images
(victim + decoder). The two parts run one after the other, so scoring new images cannot beat
the bound ``1 / (1/victim + 1/decoder-only)``; ``score_share_of_bound`` is how close it gets.
The three are timed in turn, round after round, so a change of machine load hits them alike.
(``loop``): scoring image by image, for comparison with batched scoring.

Rates are the median over the timed calls. Prints a table and writes JSON with --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dede.decoder import DeDeModel
from dede.detect import dede_scores
from dede.optim import adam
from dede.victims import build_victim

SIZES = {
    "tiny": dict(victim=dict(width=16, blocks=(1, 1, 1, 1)), decoder=dict(embed_dim=128, depth=4, num_heads=4,
                                                                             decoder_depth=2)),
    "paper": dict(victim=dict(width=64, blocks=(2, 2, 2, 2)), decoder=dict(embed_dim=192, depth=12, num_heads=3,
                                                                              decoder_depth=4)),
}
PARTS = ("train", "score", "loop")


def rates(fns: dict, n_images: int, warmup: int, rounds: int, sync) -> dict[str, float]:
    """Median images/second of each function of ``fns``, all called in turn for ``rounds``
    rounds after ``warmup`` untimed ones."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: n_images / statistics.median(t) for k, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16", "16"], default="32")
    ap.add_argument("--batch-size", type=int, default=128, help="training batch and scoring batch")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps")
    ap.add_argument("--rounds", type=int, default=3, help="timed scoring rounds")
    ap.add_argument("--score-batches", type=int, default=2, help="batches scored per timed call")
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--test-mask-ratio", type=float, default=0.99)
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder (see decoder.compile)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        ap.error(f"unknown parts {sorted(parts - set(PARTS))}; known: {PARTS}")
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]
    size = SIZES[args.size]
    victim, _ = build_victim("simclr_resnet", [0.5] * 3, [0.25] * 3, 32, **size["victim"])
    victim = victim.to(dev).eval()
    model = DeDeModel(victim.embed_dim, 32, 4, **size["decoder"]).to(dev)
    if args.compile:
        model.compile_blocks()
    b = args.batch_size
    x = torch.rand(b, 3, 32, 32, device=dev)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    res = {"size": args.size, "device": str(dev), "precision": args.precision, "batch_size": b,
           "threads": torch.get_num_threads()}
    if "train" in parts:
        opt = adam(model.parameters(), lr=1e-3)
        with torch.no_grad():
            cached = victim(x)

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

        res["train_images_per_s_cached"] = rates({"": lambda: step(True)}, b, 1, args.steps, sync)[""]
        res["train_images_per_s_uncached"] = rates({"": lambda: step(False)}, b, 1, args.steps, sync)[""]

    model.eval()
    if "score" in parts:
        n_score = args.score_batches * b
        xs = torch.rand(n_score, 3, 32, 32)
        with torch.no_grad(), autocast():
            embeddings = torch.cat([victim(xs[i:i + b].to(dev)) for i in range(0, n_score, b)])

        def victim_only():
            with torch.no_grad():
                for i in range(0, n_score, b):
                    victim(xs[i:i + b].to(dev))

        with autocast():
            r = rates({"victim": victim_only,
                       "decoder": lambda: dede_scores(model, victim, xs, args.test_mask_ratio, batch_size=b,
                                                      embeddings=embeddings),
                       "both": lambda: dede_scores(model, victim, xs, args.test_mask_ratio, batch_size=b)},
                      n_score, 1, args.rounds, sync)
        bound = 1 / (1 / r["victim"] + 1 / r["decoder"])
        res["victim_images_per_s"] = r["victim"]
        res["score_images_per_s_decoder_only"] = r["decoder"]
        res["score_images_per_s_bound"] = bound
        res["score_images_per_s_batched"] = r["both"]
        res["score_share_of_bound"] = r["both"] / bound
    if "loop" in parts:
        per_image = torch.rand(64, 3, 32, 32)
        with autocast():
            res["score_images_per_s_per_image_loop"] = rates(
                {"": lambda: [dede_scores(model, victim, per_image[i:i + 1], args.test_mask_ratio) for i in range(64)]},
                64, 0, 1, sync)[""]
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.3f}" if k.endswith("share_of_bound") else
              f"{k:<{width}}  {v:.1f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
