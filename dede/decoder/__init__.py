from dede.decoder.model import DeDeModel, random_masking
from dede.decoder.module import AuxDataModule, DeDeModule

__all__ = ["DeDeModel", "random_masking", "DeDeModule", "AuxDataModule"]
