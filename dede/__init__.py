"""DeDe: detecting backdoor samples in self-supervised image encoders by decoding."""

__version__ = "0.1.0"
