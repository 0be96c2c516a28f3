"""Training-loader throughput vs raw decord decoding of the same frames, in one run.

    python bench/loader.py [--clips 64] [--workers 1 2]

Makes its own videos (PyAV, libx264, 256×340, 64 frames) in a temp dir, shards them, then
times (a) decord alone: open the same bytes and ``get_batch`` the same frame indices the
pipeline samples (8 frames, interval 8), one process; (b) the full training loader (shuffle,
decode, sample, 224 crop + flip + RandAugment m7 n4 + normalise, batching) with 1 and 2
workers. Prints clips/s and the ratio loader / decord (target ≥ 0.9).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import webdataset as wds
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from zeroi2v.config import Config, from_dict
from zeroi2v.data import build_train_loader
from zeroi2v.data.clips import ClipLoader, seed_from
from zeroi2v.data.decode import open_video, read_frames

HEIGHT, WIDTH, FRAMES, FPS = 256, 340, 64, 25
BATCH = 8


def make_video(rng: np.random.Generator) -> bytes:
    """A textured background with a moving bright square: realistic-ish for h264."""
    background = np.kron(
        rng.integers(0, 160, (HEIGHT // 16, -(-WIDTH // 16), 3), dtype=np.uint8),
        np.ones((16, 16, 1), dtype=np.uint8),
    )[:, :WIDTH]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        x, y, dx, dy = (int(v) for v in rng.integers(0, 200, 2).tolist() + [3, 2])
        for _ in range(FRAMES):
            frame = background.copy()
            frame[
                y % (HEIGHT - 48) : y % (HEIGHT - 48) + 48, x % (WIDTH - 48) : x % (WIDTH - 48) + 48
            ] = 230
            x, y = x + dx, y + dy
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def make_shards(out: Path, clips: int) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for index in tqdm(range(clips), desc="encoding videos"):
        meta = {"label": str(index % 4), "source": f"v{index}", "fps": FPS, "frames": FRAMES,
                "width": WIDTH, "height": HEIGHT, "duration": FRAMES / FPS}  # fmt: skip
        samples.append({"__key__": f"clip{index:05d}", "mp4": make_video(rng),
                        "cls": str(index % 4).encode(),
                        "json": json.dumps(meta).encode()})  # fmt: skip
    shards = []
    for shard in range(2):
        name = f"train-{shard:06d}.tar"
        part = samples[shard::2]
        with wds.TarWriter(str(out / name)) as sink:
            for sample in part:
                sink.write(sample)
        shards.append({"name": name, "count": len(part), "sha256": ""})
    manifest = {"classes": list("0123"), "splits": {"train": {"shards": shards, "count": clips}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return samples


def bench_decord(cfg: Config, samples: list[dict], repeats: int) -> float:
    """Clips/s of decord alone on the frame indices the pipeline samples for these clips."""
    clip = ClipLoader.for_training(cfg, epoch=0)
    start = time.perf_counter()
    for _ in range(repeats):
        for sample in samples:
            reader = open_video(sample["mp4"], short_side=cfg.data.short_side,
                                size=(WIDTH, HEIGHT))  # fmt: skip
            rng = np.random.default_rng(seed_from(cfg.train.seed, 0, sample["__key__"], 0, "clip"))
            read_frames(reader, clip.indices(len(reader), rng))
    return repeats * len(samples) / (time.perf_counter() - start)


def bench_loader(cfg: Config, clips: int, repeats: int) -> float:
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0, micro_batch_size=BATCH,
                                num_batches=repeats * clips // BATCH)  # fmt: skip
    start = time.perf_counter()
    count = sum(videos.shape[0] for videos, _, _ in loader)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the clips per timing")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        samples = make_shards(Path(tmp), args.clips)

        def config(workers: int, randaugment_n: int = 4) -> Config:
            return from_dict({
                "model": {"num_frames": 8, "image_size": 224},
                "data": {"train_shards": f"{tmp}/train-*.tar", "sampling": "dense",
                         "frame_interval": 8, "short_side": 256, "shuffle_buffer": 64,
                         "num_workers": workers, "randaugment_n": randaugment_n,
                         "randaugment_m": 7, "hflip": 0.5},
            })  # fmt: skip

        raw = bench_decord(config(1), samples, args.repeats)
        print(f"decord get_batch, 1 process          : {raw:7.1f} clips/s")
        for workers in args.workers:
            for n, label in ((4, "full aug"), (0, "no RandAugment")):
                rate = bench_loader(config(workers, n), args.clips, args.repeats)
                print(f"loader, {workers} worker(s), {label:<14}: {rate:7.1f} clips/s"
                      f"  ratio vs decord {rate / raw:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
