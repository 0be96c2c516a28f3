"""Head-offset multisets: which attention heads read which other frame.

A multiset is written as pairs ``[[dt, count], ...]`` (JSON) or as in the paper,
``"{1·2, −1·2, 0·12}"``. A config gives either one multiset for every block, one per
block, or (Swin) one per stage; `offsets_per_block` resolves all three to a per-head
Δt list for every block and checks it against the backbone and the clip length.

The config resolves ``model.head_offsets`` once, when it is validated, into a `HeadOffsets`
(``cfg.model.offsets``) that every consumer reads; the JSON key keeps the spelling the user
wrote, so a dumped config reloads to the same value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from zeroi2v.errors import ConfigError
from zeroi2v.specs import BackboneSpec

Multiset = list[tuple[int, int]]


@dataclass(frozen=True)
class HeadOffsets:
    """``model.head_offsets`` resolved: every block's per-head Δt, in forward order.

    Built by `resolve` only, so a value of this type has been checked against the backbone's
    heads per block and the clip length it was resolved for (`frames`: what the attention
    sees, after any temporal patch stride).
    """

    per_block: tuple[tuple[int, ...], ...]
    frames: int

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self.per_block)

    def __len__(self) -> int:
        return len(self.per_block)

    def __getitem__(self, block: int) -> tuple[int, ...]:
        return self.per_block[block]


_FIELD = "model.head_offsets"
_PAIR = re.compile(r"^\s*([+-]?\d+)\s*[·*x×]\s*(\d+)\s*$")


def parse_multiset(spec: Any) -> Multiset:
    """Parse one multiset from JSON pairs or the paper's ``{Δt·count, ...}`` string."""
    if isinstance(spec, str):
        body = spec.strip().replace("−", "-").replace("–", "-").strip("{}")
        pairs = []
        for part in filter(None, (p.strip() for p in body.split(","))):
            match = _PAIR.match(part)
            if match is None:
                raise ConfigError(f"{_FIELD}: cannot read '{part}' in '{spec}'; write 'Δt·count'")
            pairs.append((int(match.group(1)), int(match.group(2))))
        return _checked(pairs, spec)
    if isinstance(spec, Sequence) and all(_is_pair(p) for p in spec):
        return _checked([(int(dt), int(count)) for dt, count in spec], spec)
    raise ConfigError(f"{_FIELD}: expected [[dt, count], ...] or '{{dt·count, ...}}', got {spec!r}")


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, Sequence)
        and not isinstance(item, str)
        and len(item) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
    )


def _checked(pairs: Multiset, spec: Any) -> Multiset:
    if not pairs:
        raise ConfigError(f"{_FIELD}: empty multiset {spec!r}")
    if any(count < 0 for _, count in pairs):
        raise ConfigError(f"{_FIELD}: negative head count in {spec!r}")
    return pairs


def expand(multiset: Multiset) -> list[int]:
    """Per-head Δt in the order written (the paper concatenates temporal heads first)."""
    return [dt for dt, count in multiset for _ in range(count)]


def receptive_field(dts: Sequence[int]) -> int:
    """Temporal receptive field of one layer: max Δt − min Δt + 1, with 0 included."""
    values = [0, *dts]
    return max(values) - min(values) + 1


def format_multiset(multiset: Multiset) -> str:
    """The paper's notation, e.g. ``{1·2, -1·2, 0·12}``."""
    return "{" + ", ".join(f"{dt}·{count}" for dt, count in multiset) + "}"


def is_single_multiset(spec: Any) -> bool:
    """True when `spec` is one multiset rather than a list of them."""
    return isinstance(spec, str) or (isinstance(spec, Sequence) and all(_is_pair(p) for p in spec))


def offsets_per_block(spec: Any, backbone: BackboneSpec, frames: int) -> list[list[int]]:
    """Resolve a config's offsets to one validated per-head Δt list for every block.

    `frames` is the number of frames the attention sees (after any temporal patch stride).
    """
    heads = backbone.heads_per_block()
    if is_single_multiset(spec):
        per_block = [parse_multiset(spec)] * backbone.num_blocks
    elif isinstance(spec, Sequence) and len(spec) == backbone.num_blocks:
        per_block = [parse_multiset(s) for s in spec]
    elif isinstance(spec, Sequence) and len(spec) == len(backbone.depths):
        stages = [parse_multiset(s) for s in spec]
        per_block = [stages[s] for s in backbone.stage_of_block()]
    else:
        got = f"{len(spec)} entries" if isinstance(spec, Sequence) else repr(spec)
        raise ConfigError(
            f"{_FIELD}: give one multiset, one per block ({backbone.num_blocks}) "
            f"or one per stage ({len(backbone.depths)}); got {got}"
        )
    resolved = []
    for block, (multiset, num_heads) in enumerate(zip(per_block, heads, strict=True)):
        total = sum(count for _, count in multiset)
        where = f"{_FIELD} (block {block}: {format_multiset(multiset)})"
        if total != num_heads:
            raise ConfigError(
                f"{where}: head counts sum to {total}, the block has {num_heads} heads"
            )
        too_far = [dt for dt, count in multiset if count and abs(dt) >= frames]
        if too_far:
            raise ConfigError(f"{where}: |Δt| must be < {frames} frames, got Δt={too_far[0]}")
        resolved.append(expand(multiset))
    return resolved


def resolve(spec: Any, backbone: BackboneSpec, frames: int) -> HeadOffsets:
    """`offsets_per_block` as the typed, immutable value the config hands to the models."""
    per_block = offsets_per_block(spec, backbone, frames)
    return HeadOffsets(tuple(tuple(dts) for dts in per_block), frames)
