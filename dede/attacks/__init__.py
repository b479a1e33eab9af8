from dede.attacks.badencoder import BadEncoderModule
from dede.attacks.simclr import SimCLRModule

__all__ = ["SimCLRModule", "BadEncoderModule"]
