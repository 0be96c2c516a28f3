"""Videos as real collections hold them, encoded in memory with PyAV (no ffmpeg binary).

`VARIANTS` maps a file name to how it is written: containers and codecs of several decades,
10-bit and 4:4:4 pixel formats, odd and portrait sizes, rotation metadata, variable frame
rate, audio tracks. `damaged` makes the hostile ones: a header that claims three times the
frames that decode, garbage in the middle of the stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Variant:
    container: str
    codec: str
    pix_fmt: str = "yuv420p"
    size: tuple[int, int] = (96, 64)  # (width, height)
    frames: int = 24
    audio: str | None = None  # audio codec of an extra track
    rotation: int = 0  # display rotation (counter-clockwise degrees)
    vfr: bool = False  # frame durations alternate 1/24 s and 2/24 s
    options: dict[str, str] = field(default_factory=dict)
    container_options: dict[str, str] = field(default_factory=dict)  # e.g. movflags=faststart


X264 = {"preset": "ultrafast"}
X265 = {"x265-params": "log-level=none"}
VARIANTS = {
    "h264_10bit.mkv": Variant("matroska", "libx264", "yuv420p10le", options=X264),
    "hevc_10bit.mp4": Variant("mp4", "libx265", "yuv420p10le", options=X265),
    "yuv444p.mp4": Variant("mp4", "libx264", "yuv444p", options=X264),
    "odd_size.mkv": Variant("matroska", "ffv1", "yuv444p", size=(97, 55)),
    "portrait.mp4": Variant("mp4", "libx264", size=(64, 112), options=X264),
    "rotated.mp4": Variant("mp4", "libx264", rotation=90, options=X264),
    "vfr.mkv": Variant("matroska", "libx264", vfr=True, options=X264),
    "with_audio.mp4": Variant("mp4", "libx264", audio="aac", options=X264),
    "program_stream.MPG": Variant("mpeg", "mpeg2video", audio="mp2"),
    "transport.ts": Variant("mpegts", "mpeg2video"),
    "old_divx.avi": Variant("avi", "msmpeg4v2"),
    "old_mjpeg.avi": Variant("avi", "mjpeg", "yuvj420p"),
    "windows.wmv": Variant("asf", "wmv2"),
    "flash.flv": Variant("flv", "flv"),
    "phone.3gp": Variant("3gp", "h263", size=(176, 144)),
    "web.webm": Variant("webm", "libvpx-vp9"),
    "UPPER.MP4": Variant("mp4", "mpeg4"),
    "uhd_4k.mp4": Variant("mp4", "libx264", size=(3840, 2160), frames=4, options=X264),
}


def moving_frames(frames: int, width: int, height: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a diagonal gradient that shifts right by 2 px per frame."""
    x = np.arange(width)[None, :] + np.arange(height)[:, None]
    return np.stack(
        [np.stack([(x - 2 * t) % 256, (x // 2) % 256, (255 - x) % 256], -1) for t in range(frames)]
    ).astype(np.uint8)


def write(path: Path, variant: Variant) -> Path:
    """Encode `variant` to `path` (the container is chosen by `variant.container`)."""
    width, height = variant.size
    with av.open(
        str(path), "w", format=variant.container, options=variant.container_options
    ) as out:
        stream = out.add_stream(variant.codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, variant.pix_fmt
        stream.options = dict(variant.options)
        if variant.rotation:
            stream.set_display_rotation(variant.rotation)
        stream.codec_context.time_base = Fraction(1, 48) if variant.vfr else Fraction(1, 24)
        audio = out.add_stream(variant.audio, rate=44100) if variant.audio else None
        pts = 0
        for t, rgb in enumerate(moving_frames(variant.frames, width, height)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, stream.codec_context.time_base
            pts += (1 + t % 2) if variant.vfr else 1
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio is not None:
            _write_tone(out, audio, seconds=variant.frames / 24)
    return path


def _write_tone(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    samples = np.sin(np.arange(int(44100 * seconds)) * 0.05).astype(np.float32)
    size = stream.codec_context.frame_size or 1024
    layout = "stereo" if stream.codec_context.codec.name == "mp2" else "mono"
    for start in range(0, len(samples) - size + 1, size):
        chunk = samples[start : start + size][None]
        if layout == "stereo":
            chunk = np.repeat(chunk, 2, axis=0)
        fmt = stream.codec_context.format.name
        frame = av.AudioFrame.from_ndarray(_as_format(chunk, fmt), format=fmt, layout=layout)
        frame.sample_rate, frame.pts = 44100, start
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def _as_format(chunk: np.ndarray, fmt: str) -> np.ndarray:
    if fmt.startswith("s16"):
        chunk = (chunk * 32767).astype(np.int16)
    return chunk if fmt.endswith("p") else np.ascontiguousarray(chunk.T.reshape(1, -1))


def audio_only(path: Path) -> Path:
    """An .m4a with one AAC track and no video."""
    with av.open(str(path), "w", format="mp4") as out:
        _write_tone(out, out.add_stream("aac", rate=44100), seconds=1.0)
    return path


def lying_header(good_mp4: bytes, keep: int) -> bytes:
    """An mp4 whose index lists every frame but whose samples after `keep` are empty.

    The container (and decord) count all frames; only the first `keep` decode.
    """
    data = bytearray(good_mp4)
    at = data.find(b"stsz")
    _, uniform, count = struct.unpack(">III", data[at + 4 : at + 16])
    assert uniform == 0 and count > keep
    for k in range(keep, count):
        data[at + 16 + 4 * k : at + 20 + 4 * k] = bytes(4)
    return bytes(data)


def corrupt_middle(data: bytes, start: float = 0.5, length: float = 1 / 6, seed: int = 1) -> bytes:
    """Random bytes over `length` of the file from `start` (fractions of its size) on."""
    out = bytearray(data)
    begin, count = int(len(data) * start), int(len(data) * length)
    garbage = np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8)
    out[begin : begin + count] = garbage.tobytes()
    return bytes(out)
