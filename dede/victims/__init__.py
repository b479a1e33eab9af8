from dede.victims.encoders import (ARCHS, CifarResNet, CTRLNet, ShortcutResNet, SimCLRNet, SupervisedResNet, Victim,
                                   build_victim)
from dede.victims.checkpoints import (FORMATS, CheckpointError, guess_format, load_victim_checkpoint, native_format,
                                      save_checkpoint)
from dede.victims.clip import CLIP_MEAN, CLIP_STD, tokenize

__all__ = [
    "ARCHS", "CifarResNet", "CTRLNet", "ShortcutResNet", "SimCLRNet", "SupervisedResNet", "Victim", "build_victim",
    "FORMATS", "CheckpointError", "guess_format", "load_victim_checkpoint", "native_format", "save_checkpoint",
    "CLIP_MEAN", "CLIP_STD", "tokenize",
]
