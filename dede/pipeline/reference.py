"""The trusted reference run of ``dede_ref`` when ``eval.reference.run=auto``: a clean SimCLR
victim and its DeDe decoder, trained in this process with the suspect run's own data, scale and
decoder settings but another seed and clean auxiliary data (the defender's own model), and
cached under ``<cache>/references/<key>``."""
from __future__ import annotations

import logging
from pathlib import Path

from dede.pipeline.compose import compose_train, train_in_process
from dede.report.aggregate import job_overrides

log = logging.getLogger(__name__)
# overrides of the suspect run that say nothing about the reference (its own attack and seed,
# where its outputs go, whether it evaluates itself)
DROPPED = ("attack", "seed", "hydra", "eval_after_train", "ckpt_path", "optimized_metric", "experiment")
SEED_OFFSET = 1000


def reference_overrides(run: Path, seed: int) -> list[str]:
    """train.py overrides of the reference run of the suspect run in ``run`` (seeded ``seed``)."""
    keep = [o for o in job_overrides(run) if o.lstrip("+~").split("=", 1)[0].split(".")[0].split("/")[0] not in DROPPED]
    return keep + ["attack=clean", f"seed={seed + SEED_OFFSET}", "data.poison_rate=0.0", "logger=csv"]


def ensure_reference_run(run: Path, seed: int, cache_dir: Path) -> Path:
    """The reference run directory for the suspect run in ``run``, trained now if not cached."""
    from dede.victims.factory import config_hash

    args = reference_overrides(run, seed)
    out = Path(cache_dir) / "references" / config_hash(sorted(args))
    if (out / "checkpoints" / "last.ckpt").is_file() and (out / "reference.done").is_file():
        log.info("reusing the reference run %s", out)
        return out
    log.info("training the reference run (clean SimCLR victim + DeDe decoder) into %s: train.py %s", out,
             " ".join(args))
    try:
        train_in_process(compose_train(args), out)
    except Exception as e:
        raise RuntimeError(f"training the reference run (train.py {' '.join(args)}) failed: {e}; see {out}/train.log") from e
    (out / "reference.done").write_text("complete\n")
    return out
