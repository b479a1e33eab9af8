from dede.attacks.badencoder import BadEncoderModule
from dede.attacks.clip import BadCLIPPatchModule, CLIPContrastiveModule
from dede.attacks.drupe import DRUPEModule
from dede.attacks.simclr import SimCLRModule
from dede.attacks.supervised import SupervisedModule

__all__ = ["SimCLRModule", "BadEncoderModule", "DRUPEModule", "SupervisedModule", "CLIPContrastiveModule",
           "BadCLIPPatchModule"]
