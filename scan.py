"""Scan an encoder you bring: train (or reuse) its DeDe decoder, evaluate the detectors with
their controls, write and print the report.

    python scan.py attack=badencoder checkpoint=model_200.pth data=cifar10
    python scan.py attack=external attack.victim.arch=timm attack.victim.model=resnet18 \
        checkpoint=weights.pth control_checkpoint=clean.pth data=imagefolder data.root=<folder>
"""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="scan")
def main(cfg: DictConfig) -> float | None:
    from dede.pipeline.scan import run_scan

    return run_scan(cfg).get("auroc")


if __name__ == "__main__":
    main()
