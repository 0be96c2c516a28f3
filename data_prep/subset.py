"""Few-shot training shards: K clips per class, drawn deterministically from existing shards.

The subset is a pure function of (the source shards' samples, K, seed): per class, the sample
keys are sorted and permuted by ``numpy.random.default_rng([seed, class index])``, and the
first K are kept, so K-shot ⊂ 2K-shot for the same seed and adding classes changes no other
class's draw. A benchmark's own split (VidTAB ships its few-shot lists) is taken as a key list
instead (`keys`). Samples are copied byte for byte (no re-encoding) into
``{out}/{split}-NNNNNN.tar`` with a manifest that records the source, K, seed and keys.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from data_prep.inspect import iter_samples, member
from data_prep.shard_writer import DeterministicTar, update_manifest
from zeroi2v.files import sha256_file

Sample = tuple[str, dict[str, bytes]]  # (key, {extension: bytes})


def read_samples(shards: list[Path]) -> list[Sample]:
    """Every sample of `shards`, in order, its tar members grouped by WebDataset's key rule
    (`data_prep.inspect.iter_samples`); a sample without a ``cls`` is one sentence."""
    samples: list[Sample] = []
    for path in shards:
        for sample in iter_samples(path):
            member(sample, "cls")
            samples.append(
                (sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")})
            )
    return samples


def choose(
    samples: list[Sample], classes: list[str], shots: int, seed: int
) -> dict[str, list[str]]:
    """Class name → the K keys drawn for it (see the module docstring)."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, members in samples:
        by_class[int(members["cls"])].append(key)
    chosen = {}
    for index, name in enumerate(classes):
        keys = sorted(by_class.get(index, []))
        if len(keys) < shots:
            raise ValueError(f"class {name!r} has {len(keys)} training samples, fewer than {shots}")
        order = np.random.default_rng([seed, index]).permutation(len(keys))
        chosen[name] = [keys[i] for i in order[:shots]]
    return chosen


def make_subset(
    source: Path,
    out: Path,
    shots: int | None,
    seed: int,
    *,
    split: str = "train",
    keys: list[str] | None = None,
    shard_size: int = 100,
) -> dict:
    """Write the K-shot (or listed-key) subset of `source`'s `split` to `out`; its manifest."""
    source, out = Path(source), Path(out)
    manifest = json.loads((source / "manifest.json").read_text())
    if split not in manifest["splits"]:
        raise ValueError(f"{source}/manifest.json has no split {split!r}")
    if (shots is None) == (keys is None):
        raise ValueError("give either --shots or --keys")
    entries = manifest["splits"][split]["shards"]
    samples = read_samples([source / entry["name"] for entry in entries])
    classes = manifest["classes"]
    if keys is None:
        chosen = choose(samples, classes, shots, seed)
    else:
        known = {key: classes[int(members["cls"])] for key, members in samples}
        missing = [k for k in keys if k not in known]
        if missing:
            raise ValueError(f"{len(missing)} listed keys are not in {source}, e.g. {missing[:3]}")
        chosen = defaultdict(list)
        for key in sorted(set(keys)):
            chosen[known[key]].append(key)
    wanted = {key for group in chosen.values() for key in group}
    selected = [s for s in samples if s[0] in wanted]
    np.random.default_rng(seed).shuffle(selected)  # mixed classes within and across shards
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, len(selected), shard_size):
        final = out / f"{split}-{len(shards):06d}.tar"
        writer = DeterministicTar(final.with_name(final.name + ".tmp"))
        for key, members in selected[start : start + shard_size]:
            writer.add(key, members)
        writer.close()
        os.replace(writer.path, final)
        shards.append({"name": final.name, "count": writer.count, "sha256": sha256_file(final)})
    entry = {"shards": shards, "count": len(selected)}
    result = update_manifest(out, classes, split, entry, [])
    result["subset"] = {
        "source": str(source.resolve()),
        "split": split,
        "shots": shots,
        "seed": seed,
        "keys": {name: chosen.get(name, []) for name in classes},
    }
    (out / "manifest.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
