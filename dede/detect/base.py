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

This module holds the registry only; the built-in detectors (`dede.detect.detectors`,
`dede.detect.literature`) register themselves into it when the `dede.detect` package is
imported, and a user module registers its own the same way once it is imported.
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


def known_detectors() -> list[str]:
    """Every registered detector: the built-in ones (registered when `dede.detect` is imported,
    which importing this module does first) and those of user modules imported since."""
    return list(DETECTORS)


def resolve_detectors(names, main: str = "dede") -> list[str]:
    """``"all"`` or a list of names -> the list, checked, with ``main`` (the main detector) first."""
    known = known_detectors()
    if isinstance(names, str):
        names = [names]
    names = list(names or ["dede"])
    if "all" in names:
        names = known
    unknown = [n for n in names + [main] if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {known} or 'all'")
    return [main] + [n for n in dict.fromkeys(names) if n != main]


def build_detector(name: str, **kwargs) -> Detector:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {known_detectors()}")
    return DETECTORS[name](**kwargs)
