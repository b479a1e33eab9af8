from dede.triggers.frequency import FrequencyTrigger
from dede.triggers.image_patch import ImagePatchTrigger
from dede.triggers.patch import NpzTrigger, PatchTrigger, Trigger, apply_to_uint8

__all__ = ["Trigger", "PatchTrigger", "NpzTrigger", "FrequencyTrigger", "ImagePatchTrigger", "apply_to_uint8"]
