"""Ray Tune searches over config keys and STDHA head allocations (see `search`, `allocation`)."""

from zeroi2v.tune.allocation import allocation_from_params, resolve_space, sample_allocation

__all__ = ["allocation_from_params", "resolve_space", "sample_allocation"]
