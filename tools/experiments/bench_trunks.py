#!/usr/bin/env python
"""One pass of each EfficientNet-Lite trunk over a photo at the region classifiers' scale (shorter side 600 px),
BatchNorms folded as the detector runs them: median seconds and the trunk's size.

    python tools/experiments/bench_trunks.py                       # lite0 lite2 lite1 lite0 lite2, chelsea, 2 threads
    python tools/experiments/bench_trunks.py --trunks lite0 lite2 --repeats 11 --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import skimage.data
    import torch
    import torch.nn.functional as F

    from detection.models.backbones import build_backbone, fold_batchnorm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trunks", nargs="+", default=["lite0", "lite2", "lite1", "lite0", "lite2"],
                   help="in this order (a name twice: measured twice, to see the drift of the machine)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=600, help="the photo's shorter side")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255
    h, w = img.shape[-2:]
    x = F.interpolate(img, size=(args.size, round(w * args.size / h)), mode="bilinear", align_corners=False)
    for name in args.trunks:
        bb = build_backbone(name).eval()
        fold_batchnorm(bb)
        params = sum(t.numel() for t in bb.features.parameters()) / 1e6
        with torch.inference_mode():
            xx = bb.normalize(x)
            for _ in range(2):  # warm-up
                bb(xx)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                bb(xx)
                times.append(time.perf_counter() - t)
        print(f"{name}: {statistics.median(times):.3f} s a {x.shape[-2]}x{x.shape[-1]} pass ({args.threads} threads), "
              f"{params:.2f} M trunk parameters ({2 * params:.1f} MB in fp16)", flush=True)


if __name__ == "__main__":
    main()
