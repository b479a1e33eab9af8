"""Shared helpers of the tests: compose configs and run the entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dede.pipeline import compose

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# the smallest settings that still make a working backdoored victim and decoder
TINY = [
    "logger=csv", "data.home.n_train=2000", "data.home.n_test=500", "data.batch_size=32",
    "attack.pretrain.epochs=6", "attack.pretrain.batch_size=128", "attack.make.epochs=12",
    "decoder.epochs=10", "decoder.embed_dim=64", "decoder.depth=2", "decoder.decoder_depth=1",
    "decoder.num_heads=2", "trainer.enable_progress_bar=false",
]


def compose_train(overrides: list[str]):
    os.environ.setdefault("DEDE_ROOT", str(ROOT))
    return compose.compose_train(overrides)


def run_entry(script: str, overrides: list[str], cache_dir: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEDE_CACHE=str(cache_dir), WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    r.output = r.stdout + r.stderr  # Hydra logs to stdout, errors go to stderr
    return r
