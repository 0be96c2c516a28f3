"""Probe, encode and re-encode videos entirely in memory.

decord is the reader the training pipeline uses, so it is also the judge of what counts as a
valid video here: a file that decord cannot open (or whose last frame it cannot decode) never
reaches a shard. PyAV (libx264) does the writing.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, dataclass
from fractions import Fraction

import av
import decord
import numpy as np

MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"  # FFmpeg's demuxer name for the mp4 family
# Frame widths whose videos decord 0.6 opens but cannot decode ("Check failed: from_size ==
# to_size": it copies rows padded to a larger width). Measured for every even width 2..398 at
# heights 16..48 (the height does not matter); every other even width reads back.
DECORD_UNREADABLE_WIDTHS = frozenset({2, 4, 6, 8, 12, 16, 24, 48, 72})
_LOG_TIME = re.compile(r"^\[\d{2}:\d{2}:\d{2}\] ")  # decord's "[20:35:56] " log prefix


def readable_width(width: int) -> int:
    """`width` (even), or the next even width decord reads back."""
    while width in DECORD_UNREADABLE_WIDTHS:
        width += 2
    return width


@dataclass(frozen=True)
class VideoMeta:
    fps: float
    frames: int
    width: int
    height: int
    duration: float

    def as_dict(self) -> dict:
        return asdict(self)


def probe(data: bytes) -> VideoMeta:
    """Open `data` with decord and decode its first and last frame.

    Decoding the last frame catches truncated files whose index is intact (moov atom first);
    files truncated before the index already fail to open. Raises RuntimeError.
    """
    if not data:
        raise RuntimeError("empty file")
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        frames = len(reader)
        if frames == 0:
            raise RuntimeError("no video frames")
        first_last = reader.get_batch([0, frames - 1]).asnumpy()  # (2, H, W, 3)
        fps = float(reader.get_avg_fps())
    except (decord.DECORDError, RuntimeError, ValueError) as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        message = _LOG_TIME.sub("", message)  # identical runs give identical skip reasons
        raise RuntimeError(f"decord cannot decode it ({message[:160]})") from err
    if not fps > 0:
        raise RuntimeError(f"invalid frame rate {fps}")
    height, width = first_last.shape[1:3]
    return VideoMeta(round(fps, 6), frames, int(width), int(height), round(frames / fps, 6))


def container_format(data: bytes) -> str:
    """FFmpeg's name for the container of `data` (e.g. MP4_FORMAT, "matroska,webm")."""
    with av.open(io.BytesIO(data)) as container:
        return container.format.name


def decode_all(data: bytes) -> np.ndarray:
    """All frames as (T, H, W, 3) uint8 RGB, decoded by decord (tests and `inspect`)."""
    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def encode_rgb(frames: np.ndarray, fps: float, *, lossless: bool = False, crf: int = 18) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames to an mp4 in memory.

    lossless=True uses libx264rgb with qp 0: decoded frames equal the input exactly (used for
    synthetic data, where the motion must survive). Otherwise H.264 yuv420p at `crf`.
    One encoder thread: x264 output depends on the thread count, and shards must be
    byte-identical across machines.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if width in DECORD_UNREADABLE_WIDTHS:
        raise ValueError(
            f"decord 0.6 cannot read back videos {width} pixels wide (nor "
            f"{sorted(DECORD_UNREADABLE_WIDTHS)}); choose another size"
        )
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264rgb" if lossless else "libx264", rate=_rate(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb24" if lossless else "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"qp": "0", "preset": "veryfast"} if lossless else _x264_options(crf)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def _x264_options(crf: int) -> dict[str, str]:
    return {"crf": str(crf), "preset": "fast"}


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Downscale so the short side is `short_side` (never upscale); even sizes for yuv420p,
    widened by 2 pixels where decord could not read the width back (24 → 26)."""
    if short_side and min(width, height) > short_side:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return readable_width(max(2, width - width % 2)), max(2, height - height % 2)


def needs_reencode(data: bytes, meta: VideoMeta, short_side: int | None, fps: float | None) -> bool:
    """Copy bytes unless the container is not mp4, or a resize / frame-rate change is asked."""
    if short_side and min(meta.width, meta.height) > short_side:
        return True
    if fps and abs(fps - meta.fps) > 1e-3:
        return True
    return container_format(data) != MP4_FORMAT


def reencode(
    data: bytes, *, source_fps: float, short_side: int | None, fps: float | None, crf: int = 18
) -> bytes:
    """Decode `data` with PyAV and write H.264 mp4, optionally resized and resampled in time.

    Frame-rate change picks source frame floor(i * source_fps / fps) for output frame i (drops
    or repeats frames; no blending, so motion stays sharp). Audio is dropped.
    """
    out_fps = fps or source_fps
    step = source_fps / out_fps
    buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(buf, "w", format="mp4") as out:
        in_stream = src.streams.video[0]
        width, height = _target_size(
            in_stream.codec_context.width, in_stream.codec_context.height, short_side
        )
        stream = out.add_stream("libx264", rate=_rate(out_fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = _x264_options(crf)
        emitted = 0
        for index, frame in enumerate(src.decode(in_stream)):
            while int(emitted * step + 1e-6) <= index:
                scaled = frame.reformat(width=width, height=height, format="yuv420p")
                scaled.pts, scaled.time_base = emitted, 1 / stream.average_rate  # constant rate
                out.mux(stream.encode(scaled))
                emitted += 1
        out.mux(stream.encode())
    if emitted == 0:
        raise RuntimeError("re-encoding produced no frames")
    return buf.getvalue()
