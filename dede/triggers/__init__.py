from dede.triggers.patch import NpzTrigger, PatchTrigger, Trigger, apply_to_uint8

__all__ = ["Trigger", "PatchTrigger", "NpzTrigger", "apply_to_uint8"]
