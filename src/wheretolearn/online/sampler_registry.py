"""Every sampler of the online engine by name: the static ones of :mod:`.samplers` and
Breed (:mod:`.breed`), which builds on them; imports flow samplers -> breed -> here."""

from __future__ import annotations

from typing import Any

from .breed import BreedSampler
from .samplers import STATIC_SAMPLERS, ParameterSampler

__all__ = ["SAMPLERS", "make_sampler"]

#: Registry name -> sampler class (``"uniform"``, ``"halton"``, ``"sobol"``, ``"lhs"``,
#: ``"breed"``).
SAMPLERS: dict[str, type[ParameterSampler]] = {**STATIC_SAMPLERS, BreedSampler.name: BreedSampler}


def make_sampler(name: str, bounds: Any, *, seed: Any = None, **kwargs: Any) -> ParameterSampler:
    """Build a sampler by registry name (``"uniform"``, ``"halton"``, ``"sobol"``, ``"lhs"``,
    ``"breed"``).

    ``kwargs`` go to the constructor (``boundary_share`` for every sampler, ``block_size``
    for ``"lhs"``, ``options=BreedOptions(...)`` and ``n_simulations`` for ``"breed"``); an
    unknown keyword raises ``TypeError`` naming it.
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name](bounds, seed=seed, **kwargs)
