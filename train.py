"""Obtain the victim encoder (load a checkpoint, or make and cache it) and train a DeDe decoder.

    python train.py                                  # embedded default: offline, CPU, minutes
    python train.py attack=badencoder data=cifar10 data.poison_rate=0.01
    python train.py -m decoder.mask_ratio=0.75,0.9 decoder.patch_size=2,4
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dede.pipeline.train import run_train

    metrics = run_train(cfg)
    # the value a sweeper optimises: the AUROC when the run evaluates itself, else the val loss
    return metrics.get(cfg.get("optimized_metric") or "val/loss")


if __name__ == "__main__":
    main()
