"""`python -m data_prep {shard,synthetic,subset,inspect} ...`.

Exit status of `shard`: 0 when every input was written, 3 when some inputs were skipped
(listed in manifest.json; the count is printed), 1 on errors (bad arguments, unreadable
annotations, a foreign output folder, nothing kept at all), 2 on usage errors (argparse).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from data_prep.video_io import BFRAMES, FAST_DECODE, KEYFRAME_INTERVAL, Encoding

EXIT_SKIPPED = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    shard = sub.add_parser("shard", help="videos + annotations -> {split}-NNNNNN.tar shards")
    shard.add_argument(
        "--source",
        required=True,
        choices=["folder", "k400", "ssv2", "ucf101", "hmdb51", "diving48", "ava"],
    )
    shard.add_argument("--root", required=True, type=Path, help="video folder")
    shard.add_argument(
        "--annotations",
        nargs="*",
        type=Path,
        default=[],
        help="annotation file(s) of the source (not needed for folder)",
    )
    shard.add_argument("--classes", type=Path, help="class list, one per line (folder, k400)")
    shard.add_argument("--out", required=True, type=Path)
    shard.add_argument("--split", required=True, help="output split name, e.g. train / val")
    shard.add_argument("--shard-size", type=int, default=100, help="samples per shard")
    shard.add_argument(
        "--workers", type=int, default=1, help="validation/encoding processes (ava: clip cutting)"
    )
    shard.add_argument("--short-side", type=int, help="downscale so the short side is this")
    shard.add_argument("--fps", type=float, help="re-sample to this frame rate")
    shard.add_argument("--crf", type=int, default=18, help="x264 quality when re-encoding")
    shard.add_argument(
        "--keyframe-interval",
        type=int,
        default=KEYFRAME_INTERVAL,
        help="key frame every N frames when re-encoding (copied files keep the source's); "
        "shorter decodes a training clip faster, larger files",
    )
    shard.add_argument(
        "--bframes",
        type=int,
        default=BFRAMES,
        help="B-frames between reference frames when re-encoding (x264's preset: 3); 0 decodes "
        "each frame without a later one first: faster training decode, larger files",
    )
    shard.add_argument(
        "--fast-decode",
        action=argparse.BooleanOptionalAction,
        default=FAST_DECODE,
        help="x264's fastdecode tune when re-encoding (no CABAC/deblocking: ~1.7x faster "
        "training decode for ~1.1x the bytes)",
    )
    shard.add_argument(
        "--reencode",
        action="store_true",
        help="re-encode every video, also those that could be copied as they are (whose key "
        "frames are the source's: the summary prints the longest key-frame interval)",
    )
    shard.add_argument("--seed", type=int, default=0, help="shuffle seed for the sample order")
    shard.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing shards of this split made with other inputs",
    )
    shard.add_argument("--no-progress", action="store_true", help="no progress bar")
    ava = shard.add_argument_group("ava (--annotations is the annotation CSV)")
    ava.add_argument("--label-map", type=Path, help="ava_action_list_v2.2*.pbtxt")
    ava.add_argument("--excluded", type=Path, help="ava_*_excluded_timestamps_v2.2.csv")
    ava.add_argument(
        "--proposals",
        type=Path,
        help="person boxes: CSV (..., score) or FAIR's .pkl (unpickled with only numpy arrays "
        "allowed; still, load only files you trust)",
    )
    ava.add_argument("--clip-seconds", type=float, default=2.2, help="seconds per keyframe")
    ava.add_argument(
        "--video-start", type=float, default=0.0, help="movie second of a file's first frame"
    )

    syn = sub.add_parser("synthetic", help="motion-only labelled mp4s in root/split/class/")
    syn.add_argument("--out", required=True, type=Path)
    syn.add_argument("--per-class", type=int, default=32, help="train clips per class")
    syn.add_argument("--val-per-class", type=int, default=8, help="val clips per class")
    syn.add_argument("--frames", type=int, default=16)
    syn.add_argument("--size", type=int, default=32)
    syn.add_argument("--seed", type=int, default=0)

    few = sub.add_parser("subset", help="deterministic class-balanced K-shot training shards")
    few.add_argument("--shards", required=True, type=Path, help="folder with manifest.json")
    few.add_argument("--out", required=True, type=Path)
    group = few.add_mutually_exclusive_group(required=True)
    group.add_argument("--shots", type=int, help="clips per class")
    group.add_argument("--keys", type=Path, help="a benchmark's split: sample keys, one a line")
    few.add_argument("--seed", type=int, default=0)
    few.add_argument("--split", default="train")
    few.add_argument("--shard-size", type=int, default=100)

    ins = sub.add_parser("inspect", help="counts per class/shard and a contact sheet")
    ins.add_argument("shards", nargs="+", type=Path)
    ins.add_argument("--out", type=Path, help="contact sheet PNG")
    ins.add_argument("--clips", type=int, default=4, help="rows of the contact sheet")
    ins.add_argument("--columns", type=int, default=8, help="frames per row")
    return parser


def _shard(args: argparse.Namespace) -> int:
    # lazy: a subcommand loads only its own module: a fast --help
    from data_prep.shard import shard_split
    from data_prep.sources import load_source

    if args.source == "ava":
        return _shard_ava(args)
    source = load_source(args.source, args.root, args.annotations, args.split, args.classes)
    result = shard_split(
        source,
        args.out,
        args.split,
        root=args.root,
        fps=args.fps,
        reencode=args.reencode,
        seed=args.seed,
        **_writing(args),
    )
    return _report(args, result)


def _report(args: argparse.Namespace, result: dict) -> int:
    """Print what was skipped and why; exit 3 when anything was, 1 when nothing was kept."""
    skipped = result["skipped"]
    for entry in skipped:
        print(f"skipped {entry['source']}: {entry['reason']}", file=sys.stderr)
    if result["count"] == 0:
        raise ValueError(
            f"no {args.split} sample was kept: all {len(skipped)} inputs were skipped "
            f"(reasons above and in {args.out / 'manifest.json'})"
        )
    print(
        f"{args.split}: {result['count']} samples in {len(result['shards'])} shards, "
        f"{len(skipped)} skipped (see {args.out / 'manifest.json'}), "
        f"{result['side_files']} side files (.txt/.json/.csv/hidden) ignored"
        + _gop_note(result.get("longest_keyframe_interval"))
    )
    return EXIT_SKIPPED if skipped else 0


def _writing(args: argparse.Namespace) -> dict[str, Any]:
    """The shard-writing options that every source (`shard_split`, `shard_ava`) takes."""
    return {
        "short_side": args.short_side,
        "encoding": Encoding(args.crf, args.keyframe_interval, args.fast_decode, args.bframes),
        "shard_size": args.shard_size,
        "workers": args.workers,
        "overwrite": args.overwrite,
        "progress_bar": not args.no_progress,
    }


def _gop_note(longest: int | None) -> str:
    """Why a loader may be slow: decord decodes from the key frame before each wanted frame."""
    if not longest:
        return ""
    return (
        f"; longest key-frame interval {longest} frames "
        "(copied videos keep the source's; --reencode re-encodes them)"
    )


def _shard_ava(args: argparse.Namespace) -> int:
    # lazy: a subcommand loads only its own module: a fast --help
    from data_prep.ava import shard_ava

    if len(args.annotations) != 1 or args.label_map is None:
        raise ValueError("--source ava needs --annotations AVA.csv (one file) and --label-map")
    if args.fps is not None:
        raise ValueError("--fps is not supported for --source ava (clips keep the video's rate)")
    result = shard_ava(
        args.root,
        args.annotations[0],
        args.label_map,
        args.out,
        args.split,
        excluded=args.excluded,
        proposals=args.proposals,
        clip_seconds=args.clip_seconds,
        video_start=args.video_start,
        **_writing(args),
    )
    return _report(args, result)


def _synthetic(args: argparse.Namespace) -> int:
    # lazy: a subcommand loads only its own module: a fast --help
    from data_prep.synthetic import make_synthetic

    out = make_synthetic(
        args.out, args.per_class, args.frames, args.size, args.seed, args.val_per_class
    )
    print(f"wrote {out}/train and {out}/val ({args.per_class}/{args.val_per_class} per class)")
    return 0


def _subset(args: argparse.Namespace) -> int:
    # lazy: a subcommand loads only its own module: a fast --help
    from data_prep.subset import make_subset

    keys = None if args.keys is None else args.keys.read_text().split()
    manifest = make_subset(
        args.shards,
        args.out,
        args.shots,
        args.seed,
        split=args.split,
        keys=keys,
        shard_size=args.shard_size,
    )
    count = manifest["splits"][args.split]["count"]
    print(f"{args.split}: {count} samples ({len(manifest['classes'])} classes) in {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    # lazy: a subcommand loads only its own module: a fast --help
    from data_prep.inspect import contact_sheet, count, format_table

    print(format_table(count(args.shards)))
    if args.out:
        skipped: list[tuple[str, str]] = []
        contact_sheet(args.shards, args.clips, args.columns, skipped=skipped).save(args.out)
        for key, reason in skipped:
            print(f"skipped {key}: {reason}", file=sys.stderr)
        print(f"contact sheet: {args.out} ({len(skipped)} samples skipped: they do not decode)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"shard": _shard, "synthetic": _synthetic, "subset": _subset, "inspect": _inspect}
    handler = handlers[args.command]
    try:
        return handler(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
