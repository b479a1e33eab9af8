"""The project's Hydra configs without a Hydra app: find them, compose the train config, and
train in this process into a given directory (what ``train.py`` does, minus the app).

    from dede.pipeline.compose import compose_train, train_in_process
    cfg = compose_train(["attack=clean", "seed=1021"])
    run_dir = train_in_process(cfg, "runs/reference")

Works from a source checkout, an editable install and an installed wheel (which ships the
configs as ``dede/conf``)."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

import dede

log = logging.getLogger(__name__)


def config_dir() -> Path:
    """The directory of the project's Hydra configs (``train.yaml``, ``attack/``, ...): the copy an
    installed package ships (``dede/conf``), else the top-level ``conf/`` of a source checkout or
    editable install."""
    pkg = Path(dede.__file__).resolve().parent
    for d in (pkg / "conf", pkg.parent / "conf"):
        if (d / "train.yaml").is_file():
            return d
    raise FileNotFoundError(f"no Hydra configs found in {pkg / 'conf'} (installed package) nor in {pkg.parent / 'conf'} "
                            "(source checkout): reinstall the package (pip install .) so that its configs are shipped")


def compose_train(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """The config ``train.py <overrides>`` would run with, composed in this process (also inside
    another Hydra app). ``paths.root_dir`` (``$DEDE_ROOT`` or the working directory) is filled in
    unless overridden; ``paths.output_dir`` is set by `train_in_process`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    outer = GlobalHydra.instance().hydra  # a Hydra app (or compose context) this runs in, restored after
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().hydra = outer
    if not any(o.lstrip("+~").startswith("paths.root_dir=") for o in overrides):
        # what ${oc.env:DEDE_ROOT,${hydra:runtime.cwd}} gives inside a Hydra app
        cfg.paths.root_dir = os.environ.get("DEDE_ROOT") or os.getcwd()
    return cfg


@contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """Copy this process's log records into ``path`` while the block runs (the run's own log)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def train_in_process(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Run the train pipeline (victim + DeDe decoder) on ``cfg`` into ``run_dir`` in this process,
    as ``train.py ... hydra.run.dir=<run_dir>`` would (``resolved_config.yaml``, ``victim.json``,
    ``checkpoints/``, its log in ``train.log``). Returns ``run_dir``."""
    from dede.pipeline.train import run_train

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # the caller's config stays as it was
    cfg.paths.output_dir = str(run_dir)
    with _log_file(run_dir / f"{cfg.get('task_name', 'train')}.log"):
        run_train(cfg, run_dir)
    return run_dir
