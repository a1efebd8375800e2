#!/usr/bin/env python
"""Detect objects in photos with the embedded default detector (offline) or a trained one.

    python tools/detect.py photo.jpg [more.jpg ...] [--out detections/] [--show 0.3]
    python tools/detect.py photo.jpg --proposals rcnn --members 1 --model checkpoints/classifier/train/region.pt

For each image writes ``<out>/<name>.det.png`` (boxes, class names and scores drawn) and ``<out>/<name>.det.json``
(every detection scoring at least --min-score), and prints a short table and where the time went.  An image that is
missing or cannot be decoded is reported by name and skipped; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hydra_support as hs  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--out", default="detections", help="output folder (default: ./detections)")
    p.add_argument("--model", default=None, help="region-classifier file (default: the embedded model)")
    p.add_argument("--proposals", default="paper",
                   help="proposal preset in configs/proposals/ (paper: SS k x 2 + MultiBox 200; rcnn: SS k x 1)")
    p.add_argument("--members", type=int, default=None, help="use the first N ensemble members (default: all)")
    p.add_argument("--min-score", type=float, default=0.05, help="keep detections scoring at least this (JSON)")
    p.add_argument("--show", type=float, default=0.3, help="draw and print detections scoring at least this")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return p.parse_args(argv)


def load_proposal_settings(name: str):
    from omegaconf import OmegaConf

    path = Path(hs.CONFIG_DIR) / "proposals" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        sys.exit(f"error: unknown proposal preset {name!r}; choose one of {', '.join(choices)}")
    node = OmegaConf.load(path)
    for parent in node.pop("defaults", []):  # a preset may build on another (paper builds on rcnn)
        if isinstance(parent, str) and parent != "_self_":
            node = OmegaConf.merge(OmegaConf.load(path.parent / f"{parent}.yaml"), node)
    return hs.proposal_settings(node)


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
    import torch

    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.detector import Detector, DetectorSettings
    from detection.labels import det200
    from detection.models.region import load_ensemble
    from proposals.pipeline import ProposalStage

    settings = load_proposal_settings(args.proposals)
    t0 = time.perf_counter()
    try:
        model = load_ensemble(args.model, device=args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stage = ProposalStage(settings, cache_root=Path(hs.PROJECT_ROOT) / ".cache" / "proposals")
    det = Detector(classifier=model, proposals=stage,
                   settings=DetectorSettings(score_threshold=args.min_score, members=args.members))
    print(f"model loaded in {time.perf_counter() - t0:.1f} s: {model.cfg.members} x {model.cfg.backbone} "
          f"({model.cfg.mode} mode), proposals '{args.proposals}'")
    names = det200()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in map(Path, args.images):
        try:
            if not path.is_file():
                raise ImageDecodeError(path, "no such file")
            img = read_image_rgb(path)
        except ImageDecodeError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        with torch.inference_mode():
            # a first call on a fresh model pays one-off set-up costs: time the image, not the warm-up
            t = time.perf_counter()
            res = det.detect(img)
            total = time.perf_counter() - t
        json_path, png_path = out / f"{path.stem}.det.json", out / f"{path.stem}.det.png"
        dets = [{"label": int(lab), "wnid": names.wnid(int(lab)), "name": names.name(int(lab)), "score": float(s),
                 "box_xyxy": [round(v, 2) for v in b.tolist()]}
                for b, s, lab in zip(res.boxes, res.scores, res.labels)]
        json_path.write_text(json.dumps({
            "image": str(path), "width": img.shape[1], "height": img.shape[0], "proposals": res.num_proposals,
            "seconds": {**res.seconds, "total": total}, "detections": dets}, indent=1))
        draw(img, res, png_path, show=args.show)
        shown = [d for d in dets if d["score"] >= args.show]
        print(f"\n{path} ({img.shape[1]}x{img.shape[0]}): {len(shown)} detections >= {args.show} "
              f"({len(dets)} >= {args.min_score}), {res.num_proposals} proposals")
        print(f"  {'class':<22} {'score':>6}  box (x1, y1, x2, y2)")
        for d in shown[:15]:
            b = ", ".join(f"{v:.0f}" for v in d["box_xyxy"])
            print(f"  {d['name'][:22]:<22} {d['score']:>6.3f}  ({b})")
        if len(shown) > 15:
            print(f"  ... {len(shown) - 15} more in {json_path}")
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in res.seconds.items())
        print(f"  time: {total:.2f} s ({parts})  ->  {png_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
