from dede.victims.encoders import CifarResNet, SimCLRNet, Victim, build_victim
from dede.victims.checkpoints import CheckpointError, load_victim_checkpoint

__all__ = ["CifarResNet", "SimCLRNet", "Victim", "build_victim", "CheckpointError", "load_victim_checkpoint"]
