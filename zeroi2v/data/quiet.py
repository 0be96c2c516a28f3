"""Keep decoder chatter off the terminal and turn decoder errors into one short plain line.

decord and its bundled FFmpeg write straight to file descriptor 2 (dmlc's LOG, av_log), not
through Python: opening a random file prints "ERROR opening: " followed by the file's bytes.
``quiet_stderr`` points fd 2 at /dev/null for the duration of a decoder call; every caller
turns failures into an exception whose message says what happened in plain words instead.
Readers run in one thread per process (DataLoader workers, shard workers), so hiding fd 2
for the few milliseconds of a call hides nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator

import av
import decord

decord.logging.set_level(decord.logging.QUIET)
av.logging.set_level(None)  # PyAV: FFmpeg's own log off (the default; made explicit)

# "[20:05:38] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: " prefixes
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s*\S+\.(?:cc|h|cpp):\d+:\s*")
_NOISE = re.compile(r"Check failed: |\s*Stack trace.*", re.DOTALL)
DETAIL_CHARS = 120


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null while the block runs (C libraries included)."""
    fd = 2  # where C libraries write, whatever Python's sys.stderr is at the moment
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def decoder_detail(exc: BaseException) -> str:
    """A decoder exception as one printable line: no timestamps, source paths or bytes."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:  # not "[Errno N] ...: '<none>'"
        return exc.strerror
    text = _NOISE.sub("", _DECORD_PREFIX.sub("", str(exc)))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else type(exc).__name__
    line = "".join(c if c.isprintable() and ord(c) < 128 else "?" for c in line)
    if len(line) > DETAIL_CHARS:  # cut at a word boundary, never mid-word
        line = line[:DETAIL_CHARS].rsplit(" ", 1)[0] + " ..."
    return line
