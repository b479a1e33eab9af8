"""Images per second of detectors on a chosen traffic mix, counted as `evaluate.py` counts them
(`dede.detect.harness.run_detector`: wall time of scoring plus the charge of memoised results
reused, so a detector that reuses DeDe's errors pays for them).

    python scripts/detector_throughput.py RUN [--mix clean|triggered|test] [--n 500]
        [--detectors dede,transplant_any,cascade] [--args '{"cascade": {"gate_quantile": 0.8}}']

``--mix clean``: clean test images only (deployment traffic); ``triggered``: triggered ones only;
``test``: the evaluation's mix (clean test images and the triggered ones). Detectors run in the
order given on one context (as in `evaluate.py`); for a cascade the share of images that went to
its specific test is printed too.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dede.detect.base import build_detector
from dede.detect.harness import ImageSets, run_detector
from dede.pipeline.evaluate import default_eval_config, load_run, test_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--mix", choices=("clean", "triggered", "test"), default="clean")
    p.add_argument("--n", type=int, default=500, help="clean test images the sets are drawn from")
    p.add_argument("--detectors", default="dede,transplant_any,cascade")
    p.add_argument("--args", type=json.loads, default={}, help="per-detector settings, as eval.detector_args")
    a = p.parse_args()
    e = default_eval_config(a.n)
    loaded = load_run(a.run, e, torch.device("cpu"))
    ctx = loaded.ctx
    test, trig, _, _ = test_sets(loaded.cfg, e, ctx.trigger)
    images = {"clean": test.images, "triggered": trig.images}.get(a.mix)
    if images is None:
        sets = ImageSets(test.images, trig.images)
    else:
        half = len(images) // 2
        sets = ImageSets(images[:half], images[half:])
    ctx.embed(sets.clean), ctx.embed(sets.triggered)  # as the downstream protocol does before the detectors
    for name in a.detectors.split(","):
        det = build_detector(name, **a.args.get(name, {})).fit(ctx)
        r = run_detector(det, ctx, sets, calibration=False)
        extra = ""
        if hasattr(det, "gated"):
            extra = f", specific test on {det.gated} of {len(sets.clean) + len(sets.triggered)} images"
        print(json.dumps({"detector": name, "mix": a.mix, "images_per_second": round(r.images_per_second, 1),
                          "note": extra.lstrip(", ")}), flush=True)


if __name__ == "__main__":
    main()
