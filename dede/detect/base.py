"""One interface and one registry for input-level detectors.

A detector is fitted once per evaluated run on an `EvalContext` (the victim, the DeDe
decoder, the defender's auxiliary data, ...) and then scores whole tensors of images:

    @register_detector("my_detector", needs=("decoder",))
    class MyDetector(Detector):
        def fit(self, ctx):
            self.ctx = ctx
            return self

        def score(self, images):          # uint8 (N, 3, H, W) -> (N,) float, high = suspicious
            ...

Thresholds, the benign-perturbation and clean-victim controls, downstream filtering, the
score file and the tables are computed once for every registered detector by
`dede.detect.harness`; a detector only scores. ``needs`` names what it needs beyond the victim
and the auxiliary data (``"decoder"``: the run's DeDe decoder; ``"reference"``: a trusted
encoder and decoder, ``eval.reference.run``; ``"probe"``: the downstream classifier trained on
the victim's features, ``ctx.probe_logits``); a detector whose needs are not met is skipped
by ``detectors=all`` and is an error when named.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from dede.detect.context import EvalContext

NEEDS = ("decoder", "reference", "probe")


class Detector:
    name: str = ""
    needs: tuple[str, ...] = ()

    def fit(self, ctx: "EvalContext") -> "Detector":
        self.ctx = ctx
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


DETECTORS: dict[str, type[Detector]] = {}


def register_detector(name: str, needs: tuple[str, ...] = ()) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator: make a `Detector` subclass available as ``detectors=[name]``."""
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"detector {name!r} needs {unknown}; known needs: {list(NEEDS)}")

    def deco(cls: type[Detector]) -> type[Detector]:
        if name in DETECTORS and DETECTORS[name] is not cls:
            raise ValueError(f"a detector named {name!r} is already registered ({DETECTORS[name].__qualname__})")
        cls.name, cls.needs = name, tuple(needs)
        DETECTORS[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    import dede.detect.detectors  # noqa: F401  (registers the built-in detectors)
    import dede.detect.literature  # noqa: F401  (and those from the literature)
    import dede.detect.transplant  # noqa: F401  (the transplant test for any trigger)
    import dede.detect.cascade  # noqa: F401  (a cheap score gating an expensive one)


def known_detectors() -> list[str]:
    _load_builtin()
    return list(DETECTORS)


def resolve_detectors(names) -> list[str]:
    """``"all"`` or a list of names -> the list, checked, with ``dede`` first."""
    known = known_detectors()
    if isinstance(names, str):
        names = [names]
    names = list(names or ["dede"])
    if "all" in names:
        names = known
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {known} or 'all'")
    return ["dede"] + [n for n in dict.fromkeys(names) if n != "dede"]


def build_detector(name: str, **kwargs) -> Detector:
    _load_builtin()
    return DETECTORS[name](**kwargs)
