"""Probe, encode and re-encode videos entirely in memory.

decord is the reader the training pipeline uses, so it has the last word on what is stored:
a file that decord cannot open, count or decode to its last frame is re-encoded (if FFmpeg
decoded all of it, see `data_prep.check`) or never reaches a shard. PyAV (libx264) writes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import av
import decord
import numpy as np

from zeroi2v.data.quiet import decoder_detail, quiet_stderr

MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"  # FFmpeg's demuxer name for the mp4 family
# Frame widths whose videos decord 0.6 opens but cannot decode ("Check failed: from_size ==
# to_size": it copies rows padded to a larger width). Measured for every even width 2..398 at
# heights 16..48 (the height does not matter); every other even width reads back.
DECORD_UNREADABLE_WIDTHS = frozenset({2, 4, 6, 8, 12, 16, 24, 48, 72})
# Re-encoding defaults, chosen for the training reader's speed (docs/data.md, bench/RESULTS.md):
# both decoders seek to the key frame before each wanted frame and decode from there, so at
# K400's length (250 frames, 8 frames every 16) short GOPs and x264's fastdecode tune (no CABAC,
# no deblocking) decode 2.5-3x as many clips per core as x264's defaults (key frame every 250,
# CABAC) on real footage (bench/encodings.py). Without B-frames no frame waits on a later one
# being decoded first: a key frame every 4 and no B-frames feed 1.2-1.4x the training clips per
# worker core of every 8 with x264's 3 B-frames, for 1.42x the bytes (bench/loader.py --feed).
KEYFRAME_INTERVAL = 4
BFRAMES = 0
FAST_DECODE = True


@dataclass(frozen=True)
class Encoding:
    """x264 settings for lossy writes: quality, key-frame interval (frames), fastdecode tune,
    B-frames between references."""

    crf: int = 18
    keyframe_interval: int = KEYFRAME_INTERVAL
    fast_decode: bool = FAST_DECODE
    bframes: int | None = BFRAMES  # None: x264's preset (3)

    def __post_init__(self) -> None:
        if self.keyframe_interval < 1:
            raise ValueError(f"--keyframe-interval must be >= 1, got {self.keyframe_interval}")
        if self.bframes is not None and not 0 <= self.bframes <= 16:
            raise ValueError(f"--bframes must be within 0..16 (x264's range), got {self.bframes}")

    def x264_options(self) -> dict[str, str]:
        """mbtree (macroblock-tree rate control) is off: with AVX-512, x264 (core 165, PyAV 18)
        gives different bytes for the same frames from one call to the next (it depends on
        what the heap held before); with mbtree off, or without AVX-512, it does not."""
        options = {
            "crf": str(self.crf),
            "preset": "fast",
            "g": str(self.keyframe_interval),
            "x264-params": "mbtree=0",
        }
        if self.fast_decode:
            options["tune"] = "fastdecode"
        if self.bframes is not None:
            options["bf"] = str(self.bframes)
        return options


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
    keyframe_interval: int  # the longest run of frames from a key frame to the next (or the end)

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
        with quiet_stderr():
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            frames = len(reader)
            if frames == 0:
                raise RuntimeError("no video frames")
            first_last = reader.get_batch([0, frames - 1]).asnumpy()  # (2, H, W, 3)
            fps = float(reader.get_avg_fps())
            keys = [int(k) for k in reader.get_key_indices()]
    except (decord.DECORDError, RuntimeError, ValueError) as err:
        raise RuntimeError(f"decord cannot decode it ({decoder_detail(err)})") from err
    if not fps > 0:
        raise RuntimeError(f"invalid frame rate {fps}")
    height, width = first_last.shape[1:3]
    gop = max(b - a for a, b in zip([0, *keys], [*keys, frames], strict=True))
    return VideoMeta(round(fps, 6), frames, int(width), int(height), round(frames / fps, 6), gop)


def container_format(data: bytes) -> str:
    """FFmpeg's name for the container of `data` (e.g. MP4_FORMAT, "matroska,webm")."""
    with av.open(io.BytesIO(data)) as container:
        return container.format.name


def decode_all(data: bytes) -> np.ndarray:
    """All frames as (T, H, W, 3) uint8 RGB, decoded by decord (tests)."""
    return decode_at(data, lambda total: list(range(total)))


def decode_at(data: bytes, choose: Callable[[int], Sequence[int]]) -> np.ndarray:
    """Only the frames ``choose(frame count)`` picks, (N, H, W, 3) uint8. Raises RuntimeError."""
    try:
        with quiet_stderr():
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            return reader.get_batch(list(choose(len(reader)))).asnumpy()
    except (decord.DECORDError, RuntimeError, ValueError, IndexError) as err:
        raise RuntimeError(f"decord cannot decode it ({decoder_detail(err)})") from err


def _rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def encode_rgb(
    frames: np.ndarray, fps: float, *, lossless: bool = False, encoding: Encoding = Encoding()
) -> bytes:
    """Encode (T, H, W, 3) uint8 RGB frames to an mp4 in memory.

    lossless=True uses libx264rgb with qp 0 and x264's own key-frame interval: decoded frames
    equal the input exactly (synthetic data, where the motion must survive; its 16-frame clips
    are one key frame whatever the interval). Otherwise H.264 yuv420p with `encoding`.
    One encoder thread: x264 output depends on the thread count, and shards must be
    byte-identical across machines (and mbtree off, see `Encoding.x264_options`).
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
        stream.options = {"qp": "0", "preset": "veryfast"} if lossless else encoding.x264_options()
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Downscale so the short side is `short_side` (never upscale); even sizes for yuv420p,
    widened by 2 pixels where decord could not read the width back (24 → 26)."""
    if short_side and min(width, height) > short_side:
        scale = short_side / min(width, height)
        width, height = round(width * scale), round(height * scale)
    return readable_width(max(2, width - width % 2)), max(2, height - height % 2)


def reencode(
    data: bytes,
    *,
    source_fps: float,
    short_side: int | None,
    fps: float | None,
    encoding: Encoding = Encoding(),
    rotation: int = 0,
) -> bytes:
    """Decode `data` with PyAV and write H.264 mp4, optionally resized and resampled in time.

    Frame-rate change picks source frame floor(i * source_fps / fps) for output frame i (drops
    or repeats frames; no blending, so motion stays sharp). Audio is dropped. `rotation` (the
    display matrix's counter-clockwise degrees, `av.VideoFrame.rotation`) is applied to the
    pixels, so the stored video is upright for readers that ignore the metadata (decord).
    """
    out_fps = fps or source_fps
    step = source_fps / out_fps
    buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(buf, "w", format="mp4") as out:
        in_stream = src.streams.video[0]
        in_width, in_height = in_stream.codec_context.width, in_stream.codec_context.height
        if rotation % 180:
            in_width, in_height = in_height, in_width
        width, height = _target_size(in_width, in_height, short_side)
        stream = out.add_stream("libx264", rate=_rate(out_fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = encoding.x264_options()
        emitted = 0
        for index, frame in enumerate(src.decode(in_stream)):
            if rotation:
                upright = np.rot90(frame.to_ndarray(format="rgb24"), rotation // 90)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(upright), format="rgb24")
            while int(emitted * step + 1e-6) <= index:
                scaled = frame.reformat(
                    width=width,
                    height=height,
                    format="yuv420p",
                    src_color_range=frame.color_range,  # JPEG (full) range in yuvj/MJPEG
                    dst_color_range="MPEG",  # what yuv420p H.264 is tagged and read as
                )
                scaled.pts, scaled.time_base = emitted, 1 / stream.average_rate  # constant rate
                out.mux(stream.encode(scaled))
                emitted += 1
        out.mux(stream.encode())
    if emitted == 0:
        raise RuntimeError("re-encoding produced no frames")
    return buf.getvalue()
