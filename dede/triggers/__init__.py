from dede.triggers.blend import BlendTrigger
from dede.triggers.frequency import FrequencyTrigger
from dede.triggers.generator import GeneratorTrigger
from dede.triggers.image_patch import ImagePatchTrigger
from dede.triggers.patch import NpzTrigger, PatchTrigger, Trigger, apply_to_uint8
from dede.triggers.warp import WarpTrigger

__all__ = ["Trigger", "PatchTrigger", "NpzTrigger", "FrequencyTrigger", "ImagePatchTrigger", "BlendTrigger",
           "WarpTrigger", "GeneratorTrigger", "apply_to_uint8"]
