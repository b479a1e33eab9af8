"""DeDe: detecting backdoor samples in self-supervised image encoders by decoding.

    from dede import load_detector
    det = load_detector(run_dir, "transplant_occlusion")
    scores, flags = det(images)
"""

__version__ = "0.1.0"
__all__ = ["load_detector", "FittedDetector"]


def __getattr__(name: str):  # the API loads torch and the pipeline only when it is used
    if name in __all__:
        from dede import api

        return getattr(api, name)
    raise AttributeError(f"module 'dede' has no attribute {name!r}")
