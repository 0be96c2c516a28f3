"""Shard patterns, the manifest written by ``python -m data_prep shard``, corrupt-data counters."""

from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any

import webdataset as wds

from zeroi2v.config import ConfigError

log = logging.getLogger(__name__)

_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # "s3://", "pipe:", "https://"
_SHARD_NAME = re.compile(r"[^/\s'\"]+\.tar\b")  # "train-000003.tar" in a URL or a pipe: command

# WebDataset opens http(s) URLs with `curl --connect-timeout 30 --retry 30` and no limit on a
# transfer that stalls, so a hung server would hang the run. `stream_url` hands WebDataset a
# `pipe:curl` with bounds instead: a download that fails or stalls for STALL_SECONDS ends with
# an error, which the loaders count as an unreadable shard and skip. No curl --retry: after a
# partial transfer it would write the shard again into the same pipe.
CONNECT_SECONDS = 20
STALL_SECONDS = 60


def _is_local(url: str) -> bool:
    return not _REMOTE.match(url) or url.startswith("file:")


def _local_path(url: str) -> str:
    return url.removeprefix("file://").removeprefix("file:")


def expand_shards(pattern: str, *, field: str = "shards") -> list[str]:
    """Brace-expand (``{000000..000009}``, ``::`` lists) and glob ``pattern``; check local files.

    Remote urls (``pipe:``, ``s3://``, ``https://``) are passed through unchecked.
    """
    if not pattern:
        raise ConfigError(f"{field} is empty; set it to a shard pattern like 'data/train-*.tar'")
    urls: list[str] = []
    for url in wds.shardlists.expand_urls(pattern):
        if _is_local(url) and glob.has_magic(url):
            urls += sorted(glob.glob(_local_path(url)))
        else:
            urls.append(url)
    missing = [url for url in urls if _is_local(url) and not Path(_local_path(url)).is_file()]
    if not urls or missing:
        detail = f" ({len(missing)} of {len(urls)} missing, e.g. {missing[0]})" if missing else ""
        raise FileNotFoundError(
            f"no shards found for {field}={pattern!r}{detail}; "
            "create them with `python -m data_prep shard`"
        )
    return urls


def stream_url(url: str) -> str:
    """What WebDataset opens for `url`: http(s) as a bounded `pipe:curl`, anything else as is."""
    if not url.startswith(("http://", "https://")):
        return url
    return (
        f"pipe:curl --fail --silent --show-error --location --connect-timeout {CONNECT_SECONDS} "
        f"--speed-limit 1 --speed-time {STALL_SECONDS} "
        f"{shlex.quote(url)}"
    )


def shard_name(url: str) -> str:
    """`train-000003.tar` for a path, an http URL or a `pipe:aws s3 cp s3://b/train-000003.tar -`."""
    names = _SHARD_NAME.findall(url)
    return names[-1] if names else posixpath.basename(url)


def _manifest_url(pattern: str) -> str:
    """manifest.json where the first shard is: same folder, server or pipe: command."""
    first = wds.shardlists.expand_urls(pattern)[0]
    name = shard_name(first)
    if name in first:
        head, _, tail = first.rpartition(name)
        return f"{head}manifest.json{tail}"
    return posixpath.join(posixpath.dirname(first), "manifest.json")


def read_manifest(shards_pattern: str) -> dict[str, Any]:
    """The ``manifest.json`` in the directory of the shards (classes, per-split counts)."""
    url = _manifest_url(shards_pattern)
    message = (
        f"no manifest.json next to {shards_pattern}; create shards with `python -m data_prep shard`"
    )
    if _is_local(url):
        path = Path(_local_path(url))
        if not path.is_file():
            raise FileNotFoundError(message)
        return json.loads(path.read_text())
    try:
        with wds.gopen(stream_url(url)) as stream:
            return json.loads(stream.read())
    except (OSError, ValueError) as exc:  # ValueError: the command printed no JSON
        raise FileNotFoundError(f"{message} ({url}: {exc})") from exc


def shard_counts(pattern: str) -> list[int]:
    """Samples in each shard that ``pattern`` names (in its order), from the manifest."""
    manifest = read_manifest(pattern)
    counts = {
        posixpath.basename(shard["name"]): int(shard["count"])
        for split in manifest["splits"].values()
        for shard in split["shards"]
    }
    found = []
    for url in expand_shards(pattern):
        name = shard_name(url)
        if name not in counts:
            raise ValueError(f"shard {name} is not listed in the manifest.json next to {pattern}")
        found.append(counts[name])
    return found


def count_samples(pattern: str) -> int:
    """Samples in the shards that ``pattern`` names, summed from the manifest (no tar reading)."""
    return sum(shard_counts(pattern))


class SkipCounter:
    """Counts (and logs) corrupt samples and unreadable tars across DataLoader workers.

    The counters live in shared memory, so the trainer reads workers' counts from the main
    process: ``loader.skips.samples``, ``loader.skips.shards``.
    """

    def __init__(self) -> None:
        self._samples = multiprocessing.Value("q", 0)
        self._shards = multiprocessing.Value("q", 0)

    @property
    def samples(self) -> int:
        return int(self._samples.value)

    @property
    def shards(self) -> int:
        return int(self._shards.value)

    def sample(self, key: str, url: str, reason: BaseException) -> None:
        with self._samples.get_lock():
            self._samples.value += 1
        log.warning("skipping corrupt sample %s in %s: %s", key, url, reason)

    def shard(self, exc: BaseException) -> bool:
        """webdataset handler for tar errors: count, log, continue with the next shard."""
        with self._shards.get_lock():
            self._shards.value += 1
        log.warning("skipping unreadable shard data: %r", exc)
        return True
