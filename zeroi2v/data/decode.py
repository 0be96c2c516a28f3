"""Decode frames from mp4 bytes held in memory, so shard bytes never touch disk again.

Two decoders behind one small interface (`open_video` → reader, `read_frames`, `frame_count`),
picked by ``data.decoder``: decord (the default) and torchcodec (PyTorch's decoder, on the
system's FFmpeg; on CUDA it decodes with NVDEC, ``data.decode_device: cuda``). Both return the
same (T, H, W, 3) uint8 frames for the same indices: pixel for pixel at the stored size; resized,
within a few levels, since decord scales with swscale's bicubic kernel and torchcodec with its
bilinear one (tests/test_decoders.py measures both). A video either cannot decode raises
`CorruptVideoError`, which the loaders skip and count.

Resizing happens inside the decoder (decord's ``width``/``height``, ffmpeg's swscale) rather than
afterwards: resizing a 340×256 frame to the short side costs less than handing a full-size frame
to torch. Known decord 0.6 bug: a few tiny output widths (2–4, 6, 8, 12, 16, 24, 48, 72 px; measured
over widths 2–700) fail with a size-mismatch error, so such a width is decoded one pixel wider
(a 3:2 clip at short side 32 is 48 px wide: it is read 49 wide, the crops follow).
"""

from __future__ import annotations

import io
from typing import Any

import av  # before decord: the other import order breaks PyAV's libvpx-vp9 encoder
import decord
import numpy as np
import torch

from zeroi2v.data.quiet import decoder_detail, quiet_stderr
from zeroi2v.errors import ConfigError, CorruptVideoError


DECORD_BAD_WIDTHS = frozenset({2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
DECODERS = ("decord", "torchcodec")  # data.decoder
# What torchcodec raises on bytes it cannot demux or decode (its C++ errors surface as these).
TORCHCODEC_ERRORS = (RuntimeError, ValueError, IndexError)


def check_decoder(decoder: str, device: str) -> None:
    """Fail before the first sample where a decoder cannot run at all: otherwise every video
    would fail to open, be skipped and counted as corrupt."""
    if decoder not in DECODERS:
        raise ValueError(f"data.decoder must be one of {DECODERS}, got {decoder!r}")
    if device == "cuda" and decoder != "torchcodec":
        raise ConfigError("data.decode_device 'cuda' needs data.decoder 'torchcodec'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "data.decode_device is 'cuda' but torch sees no CUDA device on this machine; "
            "set data.decode_device=cpu"
        )
    if decoder == "torchcodec":
        _load_torchcodec()


def _load_torchcodec() -> None:
    """torchcodec loads the system's FFmpeg libraries when imported (pip cannot install them):
    where they are missing, say so once and how to mend it."""
    try:
        # lazy: loads the system's FFmpeg, only for data.decoder torchcodec
        import torchcodec.decoders  # noqa: F401
    except (ImportError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"data.decoder 'torchcodec' cannot load on this machine ({decoder_detail(exc)}); "
            "install FFmpeg's shared libraries (Debian: `make sysdeps`) or set data.decoder=decord"
        ) from exc


class TorchcodecReader:
    """A torchcodec ``VideoDecoder`` seen through decord's reader interface: ``len`` and frames
    at indices. Exact seek mode: the frame index comes from a scan of the packets, as decord
    builds it, not from the container header's estimate."""

    def __init__(self, data: bytes, width: int, height: int, device: str) -> None:
        # lazy: torchcodec ([data] extra) loads the system's FFmpeg
        from torchcodec.decoders import VideoDecoder  # loads the system's FFmpeg: only when used
        from torchcodec.transforms import Resize

        resize = [Resize((height, width))] if width > 0 else None
        try:
            self.decoder = VideoDecoder(
                data,
                dimension_order="NHWC",
                num_ffmpeg_threads=1,  # DataLoader workers give the parallelism
                device=device,
                seek_mode="exact",
                transforms=resize,
            )
        except TORCHCODEC_ERRORS as exc:
            raise CorruptVideoError(f"cannot open the video: {decoder_detail(exc)}") from exc

    def __len__(self) -> int:
        return len(self.decoder)

    def read(self, indices: np.ndarray) -> Any:
        """(T, H, W, 3) uint8: a numpy array on the CPU, a tensor on the GPU it decoded on."""
        try:
            frames = self.decoder.get_frames_at(np.asarray(indices, dtype=np.int64).tolist()).data
        except TORCHCODEC_ERRORS as exc:
            raise CorruptVideoError(f"cannot decode frames: {decoder_detail(exc)}") from exc
        return frames.numpy() if frames.device.type == "cpu" else frames


def resized_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) after scaling the short side to ``short_side`` (None: unchanged)."""
    if short_side is None or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def checked_size(width: object, height: object, where: str) -> tuple[int, int]:
    """(width, height) when both are positive integers, else `CorruptVideoError`.

    A size comes from bytes we do not control (a container header, a shard's json): an image
    signature probes as 0×0 and a hand-written json may hold anything, and either would
    otherwise reach `resized_size` as a ZeroDivisionError or TypeError that no loader expects.
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise CorruptVideoError(f"{where} gives no usable frame size ({width!r}×{height!r})")
    return width, height  # type: ignore[return-value]


def probe_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the first video stream, read from the container header only."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            width, height = stream.width, stream.height
    except (av.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise CorruptVideoError(f"cannot read the video header: {decoder_detail(exc)}") from exc
    return checked_size(width, height, "the video header")


def open_video(
    data: bytes,
    *,
    short_side: int | None = None,
    size: tuple[int, int] | None = None,
    decoder: str = "decord",
    device: str = "cpu",
) -> decord.VideoReader | TorchcodecReader:
    """A single-threaded reader over ``data`` (DataLoader workers give the parallelism).

    ``short_side`` resizes on decode; ``size`` is the stored (width, height) from the shard's
    json, which saves probing the container for it. ``decoder`` is ``data.decoder``; ``device``
    (``data.decode_device``) is where torchcodec decodes.
    """
    if decoder not in DECODERS:  # the loaders call `check_decoder` once, before any sample
        raise ValueError(f"data.decoder must be one of {DECODERS}, got {decoder!r}")
    width = height = -1
    if short_side is not None:
        stored = probe_size(data) if size is None else checked_size(*size, "the stored size")
        new_size = resized_size(*stored, short_side)
        if new_size != tuple(stored):
            width, height = new_size
            while width in DECORD_BAD_WIDTHS:
                width += 1  # torchcodec too: the same frame size, so the same crops
    if decoder == "torchcodec":
        reader = TorchcodecReader(data, width, height, device)
        if len(reader) < 1:
            raise CorruptVideoError("the video has no frames")
        return reader
    try:
        with quiet_stderr():  # decord prints the bytes of a file it cannot open
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1, width=width, height=height)
    except (RuntimeError, decord.DECORDError) as exc:
        raise CorruptVideoError(f"cannot open the video: {decoder_detail(exc)}") from exc
    if len(reader) < 1:
        raise CorruptVideoError("the video has no frames")
    return reader


def read_frames(reader: decord.VideoReader | TorchcodecReader, indices: np.ndarray) -> Any:
    """Frames at ``indices`` as a (T, H, W, 3) uint8 array (a CUDA tensor when decoded there)."""
    if isinstance(reader, TorchcodecReader):
        return reader.read(indices)
    try:
        with quiet_stderr():
            return reader.get_batch(np.asarray(indices, dtype=np.int64).tolist()).asnumpy()
    except (RuntimeError, decord.DECORDError, IndexError) as exc:
        raise CorruptVideoError(f"cannot decode frames: {decoder_detail(exc)}") from exc


def frame_count(reader: decord.VideoReader | TorchcodecReader, stored: int | None = None) -> int:
    """Frames a reader may ask for: decord's count, capped by the count that decoded at shard
    time (``stored``, the shard json's ``frames``) when the shard says so."""
    return min(len(reader), stored) if stored else len(reader)


def decode(
    data: bytes,
    indices: np.ndarray,
    *,
    short_side: int | None = None,
    size: tuple[int, int] | None = None,
    decoder: str = "decord",
) -> np.ndarray:
    """Open ``data`` and read ``indices`` (T, H, W, 3) uint8; for callers that know the indices."""
    reader = open_video(data, short_side=short_side, size=size, decoder=decoder)
    return read_frames(reader, indices)
