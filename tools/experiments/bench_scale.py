#!/usr/bin/env python
"""Benchmarks of running at scale: eval_map.py on 1 rank vs 2 torchrun ranks, a joblib sweep vs the sequential one,
and the Python API's latency.

    python tools/experiments/bench_scale.py                       # all three, val with cached proposals (about 30 min on 2 cores)
    python tools/experiments/bench_scale.py --only eval --limit 200
    python tools/experiments/bench_scale.py --only api --repeats 3 --threads 2
    python tools/experiments/bench_scale.py --only api --busy 0 3 --threads 1 2 --overlap on off   # idle vs 3 busy processes

Each eval_map run recomputes its detections (``resume=false``) with one thread per rank, so the comparison is
1 core against 2.  Prints a table and writes ``bench_scale.json`` (in ``--out``).  Proposals must be cached for the
eval benchmark (``python tools/extract_proposals.py --split val``), else their extraction is timed too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str], log: Path, threads: int = 1) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DET_PROGRESS": "lines"}
    t = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed (exit {r.returncode}); see {log}")
    return dt


def bench_eval(args, out: Path) -> dict:
    common = [f"--split={args.split}", "resume=false", "workers=1", "eval.report=false"] + (
        [f"limit={args.limit}"] if args.limit else [])
    res = {}
    for name, launcher in (("1 rank", [sys.executable]),
                           ("2 ranks", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                        "--master_port=29561"])):
        run_dir = out / f"eval_{name.replace(' ', '_')}"
        wall = run(launcher + ["tools/eval_map.py", *common, f"hydra.run.dir={run_dir}"], out / f"{run_dir.name}.log")
        m = json.loads((run_dir / "metrics.json").read_text())
        res[name] = {"wall_s": wall, "mAP": m["mAP"], "detector_s_per_image": m["seconds_per_image"],
                     "images": m["num_images"], "detections": json.loads((run_dir / "detections.json").read_text())}
    one, two = res["1 rank"], res["2 ranks"]
    return {"split": args.split, "limit": args.limit, "images": one["images"],
            "wall_1rank_s": one["wall_s"], "wall_2ranks_s": two["wall_s"],
            "detector_1rank_s": one["detector_s_per_image"] * one["images"],
            "detector_2ranks_s": two["detector_s_per_image"] * two["images"],
            "speedup_wall": one["wall_s"] / two["wall_s"],
            "speedup_detector": one["detector_s_per_image"] / two["detector_s_per_image"],
            "mAP_1rank": one["mAP"], "mAP_2ranks": two["mAP"],
            "same_detections": one["detections"] == two["detections"]}


def bench_sweep(args, out: Path) -> dict:
    common = ["tools/eval_proposals.py", "-m", f"--split={args.sweep_split}", "proposals=rcnn",
              "proposals.selective_search.k_scale=1,2", "workers=1"]
    res = {}
    for name, extra in (("sequential", []), ("joblib", ["hydra/launcher=parallel"])):
        d = out / f"sweep_{name}"
        # a fresh cache per launcher: both sweeps compute the same proposals
        res[name] = run([sys.executable, *common, f"cache_dir={out / f'sweep_cache_{name}'}", *extra,
                         f"hydra.sweep.dir={d}"], out / f"sweep_{name}.log")
        rows = json.loads((d / "summary.json").read_text())
        res[name + "_rows"] = [{k: v for k, v in r.items() if k not in ("s/img", "overrides")} for r in rows]
    return {"split": args.sweep_split, "sequential_s": res["sequential"], "joblib_s": res["joblib"],
            "speedup": res["sequential"] / res["joblib"],
            "same_table": res["sequential_rows"] == res["joblib_rows"]}


def bench_api(args) -> dict:
    """load_detector(), then detect() on skimage's photos: median of ``--repeats`` after a warm-up call, with the
    seconds per stage and the best detection, and the floor: selective search alone plus one bare trunk pass at the
    classifiers' scale.  The variants (mirror view, ImageNet prior, overlap, threads) take turns within each repeat,
    so that the machine's state slows them alike; each ``--busy`` level (busy processes beside it) is measured in
    turn in the same run."""
    loaded = dets_for(args)
    out = {"load_s": loaded[1], "repeats": args.repeats, "image_sizes": args.image_sizes,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "levels": {}}
    for n in args.busy:
        busy = start_busy(n)
        try:
            out["levels"][str(n)] = _bench_api(args, loaded, busy)
        finally:
            for b in busy:
                b.kill()
    return out


def start_busy(n: int) -> list:
    """``n`` processes that keep one core each busy (a single-threaded matrix product in a loop): other jobs on the
    machine, as users run detectors beside them."""
    code = "import numpy as np\nx = np.random.rand(400, 400)\nwhile True:\n    x = (x @ x) / 400.0"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(n)]
    time.sleep(1.0 if n else 0.0)  # let them start
    return procs


def dets_for(args) -> tuple:
    from detection import load_detector

    t = time.perf_counter()
    dets = {(p, pr): load_detector(proposals=pr, image_sizes=args.image_sizes, imagenet_prior=p == "on")
            for p in args.imagenet_prior for pr in args.proposals}
    return dets, (time.perf_counter() - t) / len(dets)


def _floor(det, img) -> dict:
    """Selective search alone and one bare trunk pass (the backbone's whole feature extractor) at the classifiers'
    scale: what no detector of this design can skip."""
    import torch

    t = time.perf_counter()
    det.proposals.ss(img)
    t_ss = time.perf_counter() - t
    with torch.inference_mode():
        t = time.perf_counter()
        x, _ = det.classifier.prepare_image(img)
        det.classifier.backbones[0](x[None])
        t_trunk = time.perf_counter() - t
    return {"selective_search": t_ss, "trunk": t_trunk}


def _bench_api(args, loaded, busy) -> dict:
    import numpy as np
    import skimage.data
    import torch

    import detection.detector as detector_module
    from detection.detector import set_threads

    dets, _ = loaded
    cores = len(os.sched_getaffinity(0))
    out = {"busy_processes": len(busy)}
    variants = [(f, p, o, t, pr) for f in args.flip for p in args.imagenet_prior for o in args.overlap
                for t in args.threads for pr in args.proposals]
    any_det = next(iter(dets.values()))
    yield_core = detector_module.overlap_threads
    for name in args.photos:
        img = getattr(skimage.data, name)()
        times = {v: [] for v in variants}
        stages = {v: [] for v in variants}
        floors = {t: [] for t in args.threads}
        last = {}
        for rep in range(args.repeats + 1):  # the first round is a warm-up: first-call set-up costs
            for t in args.threads:  # (threads 0, adapting to the machine: the floor of all cores)
                set_threads(t or cores)
                fl = _floor(any_det, img)
                if rep:
                    floors[t].append(fl)
            for v in variants:
                f, p, o, t, pr = v
                det = dets[(p, pr)]
                det.settings.flip, det.settings.overlap_proposals = f == "on", o != "off"
                # "all": the trunk keeps every thread while selective search runs beside it (not the detector's way)
                detector_module.overlap_threads = (lambda n: n) if o == "all" else yield_core
                det.settings.threads = t  # set by detect() before the image
                t0 = time.perf_counter()
                r = det.detect(img)
                if rep:
                    times[v].append(time.perf_counter() - t0)
                    stages[v].append({**r.seconds, "threads": det.last_threads or t})
                last[v] = r
        photo = out.setdefault(name, {"size": f"{img.shape[1]}x{img.shape[0]}", "floor": {}, "variants": {}})
        for t in args.threads:
            ss = float(np.median([x["selective_search"] for x in floors[t]]))
            tr = float(np.median([x["trunk"] for x in floors[t]]))
            photo["floor"][str(t)] = {"selective_search_s": ss, "trunk_s": tr, "sum_s": ss + tr}
        for v in variants:
            f, p, o, t, pr = v
            st = stages[v]
            keys = [k for k in st[0] if not k.startswith("classify.")] + (["classify.flip_view"] if f == "on" else [])
            med = statistics.median(times[v])
            photo["variants"][f"flip={f} prior={p} overlap={o} threads={t}"
                              + (f" proposals={pr}" if len(args.proposals) > 1 else "")] = {
                "detect_median_s": med, "ratio_to_floor": med / photo["floor"][str(t)]["sum_s"],
                "stage_median_s": {k: float(np.median([s.get(k, 0.0) for s in st])) for k in keys},
                "top": [{"name": d["name"], "score": round(d["score"], 3)} for d in last[v].to_list()[:3]]}
    torch.set_num_threads(args.threads[0] or cores)
    detector_module.overlap_threads = yield_core
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["eval", "sweep", "api"], action="append")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None, help="eval: the first N images only")
    p.add_argument("--sweep-split", default="val_small")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="api: torch threads (several: each in turn; 0: adapt to the machine per image)")
    p.add_argument("--overlap", nargs="+", default=["on"], choices=["on", "off", "all"],
                   help="api: selective search in a thread while the trunk runs on the other cores (on, the "
                        "default), not (off), or beside a trunk on all the threads (all); several: each in turn")
    p.add_argument("--flip", nargs="+", default=["on"], choices=["on", "off"],
                   help="api: with the test-time mirror view (on, the default), without it (off), or both")
    p.add_argument("--photos", nargs="+", default=["chelsea", "coffee", "astronaut"],
                   choices=["chelsea", "coffee", "astronaut", "rocket"], help="api: which of skimage's photos")
    p.add_argument("--busy", type=int, nargs="+", default=[0], metavar="N",
                   help="api: run N busy processes (one core each) beside the benchmark (default 0: idle); several "
                        "levels, e.g. 0 3, are measured one after the other in the same run")
    p.add_argument("--imagenet-prior", nargs="+", default=["on"], choices=["on", "off"],
                   help="api: with the ImageNet prior (on, the default), without it (off), or both")
    p.add_argument("--proposals", nargs="+", default=["paper"],
                   help="api: proposal presets to compare (e.g. paper paper_crops: one trunk pass vs MultiBox's own "
                        "14 windows)")
    p.add_argument("--image-sizes", type=int, nargs="+", default=None, metavar="PX",
                   help="api: multi-scale testing with this image pyramid (e.g. 600 1200; default: off)")
    p.add_argument("--out", default="outputs/bench_scale")
    args = p.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    which = args.only or ["eval", "sweep", "api"]
    res = {}
    if "api" in which:
        res["api"] = a = bench_api(args)
        print(f"api: load_detector() {a['load_s']:.2f} s; detect(), median of {a['repeats']}"
              + (f", image pyramid {a['image_sizes']}" if a["image_sizes"] else "")
              + (f", OMP_WAIT_POLICY={a['omp_wait_policy']}" if a["omp_wait_policy"] else "") + ":")
        for n, level in a["levels"].items():
            print(f" {n} busy processes beside it:")
            for name, ph in [(k, v) for k, v in level.items() if k != "busy_processes"]:
                fl = ", ".join(f"{t} threads {f['sum_s']:.2f} s (selective search {f['selective_search_s']:.2f} + "
                               f"trunk {f['trunk_s']:.2f})" for t, f in ph["floor"].items())
                print(f"  {name} ({ph['size']}): floor {fl}")
                for v, r in ph["variants"].items():
                    print(f"    {v}: {r['detect_median_s']:.2f} s = {r['ratio_to_floor']:.2f}x the floor ("
                          + ", ".join(f"{k} {x:.2f}" for k, x in r["stage_median_s"].items()) + "); top: "
                          + ", ".join(f"{d['name']} {d['score']:.2f}" for d in r["top"]))
        if "0" in a["levels"] and len(a["levels"]) > 1:
            idle = a["levels"]["0"]
            for n, level in a["levels"].items():
                if n == "0":
                    continue
                for name in args.photos:
                    for v, r in level[name]["variants"].items():
                        print(f"  busy {n} / idle, {name}, {v}: "
                              f"{r['detect_median_s'] / idle[name]['variants'][v]['detect_median_s']:.2f}x")
    if "eval" in which:
        res["eval"] = e = bench_eval(args, out)
        print(f"eval_map {e['split']} ({e['images']} images): 1 rank {e['wall_1rank_s']:.0f} s, 2 ranks "
              f"{e['wall_2ranks_s']:.0f} s wall ({e['speedup_wall']:.2f}x; detector alone {e['speedup_detector']:.2f}x); "
              f"mAP {100 * e['mAP_1rank']:.2f} / {100 * e['mAP_2ranks']:.2f} %, same detections: {e['same_detections']}")
    if "sweep" in which:
        res["sweep"] = s = bench_sweep(args, out)
        print(f"sweep eval_proposals {s['split']} k_scale=1,2: sequential {s['sequential_s']:.0f} s, joblib 2 jobs "
              f"{s['joblib_s']:.0f} s ({s['speedup']:.2f}x); same table: {s['same_table']}")
    (out / "bench_scale.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {out / 'bench_scale.json'}")


if __name__ == "__main__":
    main()
