#!/usr/bin/env python
"""Detect objects in photos with the embedded default detector (offline) or a trained one.

    python tools/detect.py photo.jpg [more.jpg ...] [--out detections/] [--show 0.3]
    python tools/detect.py photos/ 'more/*.jpg' --no-draw          # folders and glob patterns, progress over all
    python tools/detect.py photo.jpg --proposals rcnn --members 1 --model checkpoints/classifier/train/region.pt
    python tools/detect.py --help                                  # every setting with its default
    torchrun --nproc_per_node=2 tools/detect.py photos/             # each rank takes its share of the images

For each image writes ``<out>/<name>.det.png`` (boxes, class names and scores drawn; ``--no-draw`` skips it) and
``<out>/<name>.det.json`` (every detection scoring at least --score-threshold), and for the whole run
``<out>/detections.json`` (COCO results: ``image_id`` as listed in ``<out>/images.json``, ``category_id`` = DET id
1..200, ``bbox`` x, y, w, h) with ``<out>/images.json`` (COCO images + categories, so ``pycocotools``' ``COCO(...)
.loadRes(...)`` reads them) and ``<out>/run.json`` (the settings, the counts, and every image that failed with its
problem).  For a few images it prints a table each and where the time went; for many, progress and a summary.  An
image that is missing or cannot be decoded is reported by name, listed in run.json and skipped; the exit status is
then 1.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

EXIF_NOTE = """

Photos are read upright: the EXIF orientation a phone or camera recorded is applied before detection, so the boxes
(JSON and pictures) are in the frame the photo is viewed in."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    from detection.config import add_settings_arguments
    from detection.detector import DetectorSettings, LoadSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + EXIF_NOTE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files, folders (their images, sorted) or glob patterns")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders of folders too")
    p.add_argument("--out", default="detections", help="output folder (default: %(default)s)")
    p.add_argument("--show", type=float, default=0.3,
                   help="draw and print the detections scoring at least this (default: %(default)s)")
    p.add_argument("--no-draw", action="store_true", help="write no pictures (JSON only)")
    p.add_argument("--print-max", type=int, default=10,
                   help="print a table per image when there are at most this many images (default: %(default)s)")
    # the detector's settings: one option per field of the settings dataclasses, their defaults and help
    add_settings_arguments(p.add_argument_group("what is loaded"), LoadSettings, skip=("cache_dir",))
    add_settings_arguments(p.add_argument_group("the detector's settings"), DetectorSettings)
    return p.parse_args(argv)


def expand_inputs(items: list[str], *, recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Files, folders and glob patterns -> image paths in the order given (each folder's images sorted), without
    repeats; and the problems (a pattern matching nothing, an empty folder).  A path that does not exist is kept, so
    that it is reported by name like an unreadable image."""
    out, problems, seen = [], [], set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir())
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{p}: no images (by extension: {', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
            for f in found:
                add(f)
        elif not p.exists() and glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                problems.append(f"{item}: the pattern matches no file")
            for f in files:
                add(f)
        else:
            add(p)
    return out, problems


def output_names(paths: list[Path]) -> list[str]:
    """One output name per image, never two alike (case-insensitively, for macOS and Windows): its stem; on a clash
    the parent folder's name and the stem; then a number."""
    from collections import Counter

    stems = Counter(p.stem.lower() for p in paths)
    used: set = set()
    names = []
    for p in paths:
        base = p.stem if stems[p.stem.lower()] == 1 else f"{p.parent.name}_{p.stem}"
        name, k = base, 0
        while name.lower() in used:
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        names.append(name)
    return names


def draw(image_rgb, result, path: Path, *, show: float) -> None:
    """Boxes with class name and score, best on top."""
    from PIL import Image, ImageDraw, ImageFont

    from detection.labels import det200

    names = det200()
    im = Image.fromarray(image_rgb)
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=max(12, im.width // 45))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    width = max(2, im.width // 250)
    colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    keep = [i for i in range(len(result.scores)) if float(result.scores[i]) >= show]
    for i in reversed(keep):
        x1, y1, x2, y2 = result.boxes[i].tolist()
        lab = int(result.labels[i])
        col = colours[lab % len(colours)]
        d.rectangle([x1, y1, x2, y2], outline=col, width=width)
        text = f"{names.name(lab)} {float(result.scores[i]):.2f}"
        tb = d.textbbox((x1, y1), text, font=font)
        ty = y1 - (tb[3] - tb[1]) - 4 if y1 - (tb[3] - tb[1]) - 4 >= 0 else y1
        tb = d.textbbox((x1 + 2, ty), text, font=font)
        d.rectangle([tb[0] - 2, tb[1] - 2, tb[2] + 2, tb[3] + 2], fill=col)
        d.text((x1 + 2, ty), text, fill="white", font=font)
    im.save(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from detection.api import as_rgb_array, load_detector
    from detection.files import atomic_write_text
    from detection.data.image_io import ImageDecodeError
    from detection.distributed import finish, gather_objects, init_distributed
    from detection.labels import det200
    from detection.progress import progress as progress_bar

    paths, problems = expand_inputs(args.images, recursive=args.recursive)
    try:
        rank, world = init_distributed(args.device)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    say = print if rank == 0 else (lambda *_a, **_k: None)
    for msg in problems:
        if rank == 0:
            print(f"error: {msg}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        from detection.config import settings_from_args
        from detection.detector import DetectorSettings
        from detection.distributed import rank_device

        settings = settings_from_args(args, DetectorSettings)  # checked before any weights load
        det = load_detector(args.model, settings=settings, proposals=args.proposals,
                            device=str(rank_device(args.device)), backbone_weights=args.backbone_weights)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        finish(world)
        return 2
    c = det.classifier.cfg
    say(f"model loaded in {time.perf_counter() - t0:.1f} s: {c.members} x {c.backbone} ({c.mode} mode), proposals "
        f"'{args.proposals}'; {len(paths)} image{'s' if len(paths) != 1 else ''}"
        + (f" over {world} ranks" if world > 1 else ""))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(paths)
    verbose = len(paths) <= args.print_max
    mine = list(range(rank, len(paths), world))
    done, failed = {}, []
    t_run = time.perf_counter()
    for i in progress_bar(mine, desc="detect" + (f" [rank {rank}/{world}]" if world > 1 else ""), unit="img",
                          disable=verbose or rank != 0):
        path = paths[i]
        try:
            rgb = as_rgb_array(path)
            res = det.detect(rgb)
            res.image = str(path)
        except (ImageDecodeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append({"file": str(path), "error": getattr(e, "problem", str(e))})
            continue
        json_path, png_path = out / f"{names[i]}.det.json", out / f"{names[i]}.det.png"
        record = res.to_dict()
        atomic_write_text(json_path, json.dumps(record, indent=1))
        if not args.no_draw:
            draw(rgb, res, png_path, show=args.show)
        done[i] = {"file": str(path), "width": res.width, "height": res.height, "detections": record["detections"],
                   "seconds": res.seconds}
        if verbose:
            shown = res.above(args.show)
            print(f"\n{path} ({res.width}x{res.height}): {len(shown)} detections >= {args.show} "
                  f"({len(res)} >= {args.score_threshold}), {res.num_proposals} proposals")
            print(f"  {'class':<22} {'score':>6}  box (x1, y1, x2, y2)")
            for d in shown[:15]:
                b = ", ".join(f"{v:.0f}" for v in d["box_xyxy"])
                print(f"  {d['name'][:22]:<22} {d['score']:>6.3f}  ({b})")
            if len(shown) > 15:
                print(f"  ... {len(shown) - 15} more in {json_path}")
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in res.seconds.items() if k != "total")
            print(f"  time: {res.seconds['total']:.2f} s ({parts})  ->  "
                  f"{json_path if args.no_draw else png_path}")
    wall = time.perf_counter() - t_run
    gathered = gather_objects((done, failed), world)
    finish(world)
    if rank != 0:
        # only rank 0 reports the run's status: torchrun stops every rank when one exits non-zero, which would kill
        # rank 0 before it writes the run files
        return 0
    done = {i: d for g in gathered for i, d in g[0].items()}
    failed = sorted((f for g in gathered for f in g[1]), key=lambda f: f["file"])
    write_run_files(out, [done[i] for i in sorted(done)], [i + 1 for i in sorted(done)], det200())
    n = len(done)
    n_det = sum(sum(d["score"] >= args.show for d in r["detections"]) for r in done.values())
    secs = sorted(r["seconds"]["total"] for r in done.values())
    med = secs[len(secs) // 2] if secs else float("nan")
    from dataclasses import asdict

    atomic_write_text(out / "run.json", json.dumps({
        "images": len(paths), "done": n, "failed": failed, "inputs_without_images": problems,
        "model": args.model or "embedded default", "proposals": args.proposals, "settings": asdict(settings),
        "seconds": round(wall, 3), "ranks": world}, indent=1))
    say(f"\n{n} of {len(paths)} images done in {wall:.1f} s"
        + (f" on {world} ranks" if world > 1 else "") + f" (median {med:.2f} s/image), {n_det} detections >= "
        f"{args.show}; {len(failed)} failed" + (f", {len(problems)} inputs without images" if problems else "")
        + f"  ->  {out / 'detections.json'}, {out / 'run.json'}")
    return 1 if failed or problems else 0


def write_run_files(out: Path, results: list[dict], image_ids: list[int], classes) -> None:
    """``detections.json`` (COCO results of the run) and ``images.json`` (its COCO images and categories)."""
    from detection.files import atomic_write_text

    images = [{"id": iid, "file_name": r["file"], "width": r["width"], "height": r["height"]}
              for iid, r in zip(image_ids, results)]
    cats = [{"id": k, "name": classes.name(k), "wnid": classes.wnid(k)} for k in range(1, len(classes))]
    dets = [{"image_id": iid, "category_id": d["label"], "score": round(d["score"], 6),
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]}
            for iid, r in zip(image_ids, results) for d in r["detections"]
            for x1, y1, x2, y2 in [d["box_xyxy"]]]
    atomic_write_text(out / "images.json", json.dumps({"images": images, "categories": cats}))
    atomic_write_text(out / "detections.json", json.dumps(dets))


if __name__ == "__main__":
    sys.exit(main())
