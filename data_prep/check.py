"""The decode check every input passes before it may reach a shard: by content, every frame.

Files are judged by what they hold, not by their name: FFmpeg (PyAV) probes the container,
then every packet of the first video stream is decoded (no pixel conversion, so the cost is
the codec's alone). What is found decides the file's fate:

- no container FFmpeg knows, no video stream, no frame that decodes → skipped;
- a decode error before the last packet → skipped as "corrupt frames at a–b s";
- a decode error at the last packet, short of what the header promises → "truncated";
- fewer frames than the header claims but no error (headers lie) → kept, and the sharder
  re-encodes what decodes so the stored file's index is the truth;
- a display rotation → kept, re-encoded upright (decord ignores rotation metadata).

Reasons are plain words a user can act on; the decoder's own one-line detail follows them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av

from zeroi2v.data.quiet import decoder_detail


class Unusable(ValueError):
    """The input cannot become a sample; the message is the reason listed in manifest.json."""


@dataclass(frozen=True)
class DecodeReport:
    frames: int  # frames that actually decode
    header_frames: int  # frames the container claims (0: it does not say)
    header_duration: float  # seconds the container claims (0: it does not say)
    fps: float  # average frame rate of the stream
    width: int
    height: int
    rotation: int  # display rotation in degrees (0, 90, 180, 270)


def decode_check(data: bytes) -> DecodeReport:
    """Decode every frame of the first video stream of ``data``; raise Unusable with a reason."""
    if not data:
        raise Unusable("empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(data))
    except (av.FFmpegError, ValueError) as exc:
        if data[4:8] == b"ftyp":
            raise Unusable(
                f"truncated or unfinished mp4: its index (moov) is missing ({decoder_detail(exc)})"
            ) from exc
        raise Unusable(
            f"not a video file: no known container format ({decoder_detail(exc)})"
        ) from exc
    with container:
        if not container.streams.video:
            has_audio = bool(container.streams.audio)
            raise Unusable("no video stream (audio only)" if has_audio else "no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # shard workers give the parallelism
        header_duration = _header_duration(container, stream)
        frames, rotation, last_time, errors = 0, 0, 0.0, []
        packets = 0  # packets that carry data (the demuxer ends with an empty flush packet)
        try:
            for packet in container.demux(stream):
                packets += packet.size > 0
                try:
                    for frame in packet.decode():
                        frames += 1
                        rotation = frame.rotation or rotation
                        last_time = frame.time if frame.time is not None else last_time
                        if frame.is_corrupt:
                            errors.append((packets, _time(packet), "frame marked corrupt"))
                except av.FFmpegError as exc:
                    errors.append((packets, _time(packet), decoder_detail(exc)))
        except av.FFmpegError as exc:  # the demuxer gave up: the file ends early
            errors.append((packets + 1, last_time, decoder_detail(exc)))
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        _judge(frames, packets, errors, last_time, header_duration)
        return DecodeReport(
            frames=frames,
            header_frames=int(stream.frames or 0),
            header_duration=header_duration,
            fps=fps,
            width=int(width),
            height=int(height),
            rotation=int(rotation) % 360,
        )


def _judge(
    frames: int,
    packets: int,
    errors: list[tuple[int, float | None, str]],
    last_time: float,
    header_duration: float,
) -> None:
    if frames == 0:
        detail = f" ({errors[0][2]})" if errors else ""
        raise Unusable(f"no frame decodes{detail}")
    if not errors:
        return
    at_end = all(index >= packets for index, _, _ in errors)
    if at_end and header_duration > last_time:
        raise Unusable(
            f"truncated: ends at {last_time:.1f} s of {header_duration:.1f} s ({errors[-1][2]})"
        )
    times = [t for _, t, _ in errors if t is not None]
    span = sorted({f"{t:.1f}" for t in (min(times), max(times))}) if times else []
    where = f"at {'–'.join(span)} s" if span else "in the stream"
    raise Unusable(f"corrupt frames {where} ({len(errors)} packets fail: {errors[0][2]})")


def _time(packet: av.Packet) -> float | None:
    if packet.pts is None or packet.time_base is None:
        return None
    return float(packet.pts * packet.time_base)


def _header_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else 0.0
