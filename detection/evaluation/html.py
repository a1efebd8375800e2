"""Self-contained HTML pages of an evaluation: ``report.html`` (eval_map.py), ``coverage.html`` (eval_proposals.py)
and ``summary.html`` (a ``-m`` sweep).

Everything a page shows lives beside it (the plots, and thumbnails in ``report_files/``): no scripts, no CDN, readable
offline and from a copied folder.  Numbers carry their exact value in a ``data-value`` attribute, so a test (or a
script) can check the page against ``metrics.json``.
"""
from __future__ import annotations

import datetime as _dt
import html
import math
from pathlib import Path
from urllib.parse import quote

import numpy as np
from detection.evaluation.errors import LOC_KINDS
from detection.files import atomic_write_text

__all__ = ["write_report", "write_coverage_page", "write_summary_page"]

# the kinds of a mislocalised detection (detection.evaluation.errors), as the report names them
_LOC_KIND_NAMES = {"part": "part: inside an object of its class", "group": "group: holds two or more objects",
                   "loose": "loose: holds one object, too large", "shifted": "shifted: none of these"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:18px 24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.sub{color:#555;margin-bottom:14px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:10px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}.card .k{color:#555;font-size:12px}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #eee}
th{background:#f5f5f7;position:sticky;top:0}td.l,th.l{text-align:left}
tr:hover td{background:#fafafa}
.bar{display:inline-block;height:9px;background:#2ca02c;vertical-align:middle;margin-left:6px}
img.plot{max-width:100%;border:1px solid #eee}
.gal{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:4px;background:#fafafa}
figure img{display:block}
figcaption{font-size:11px;color:#333;max-width:230px;overflow-wrap:anywhere}
.t-duplicate{color:#9467bd}.t-mislocalised{color:#d95f02}.t-confusion{color:#1f77b4}.t-background{color:#555}
.t-missed{color:#d62728}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{color:#555}dd{margin:0}
.note{color:#666;font-size:12px}
.scroll{overflow-x:auto;max-width:100%}
"""

_TYPE_COLOURS = {"duplicate": (148, 103, 189), "mislocalised": (217, 95, 2), "confusion": (31, 119, 180),
                 "background": (90, 90, 90), "missed": (214, 39, 40)}


# the kinds of a mislocalised detection (detection.evaluation.errors), as the report names them
_LOC_KIND_NAMES = {"part": "part: inside an object of its class", "group": "group: holds two or more objects",
                   "loose": "loose: holds one object, too large", "shifted": "shifted: none of these"}


_PLOT_TITLES = {"pr_curves.png": "Precision–recall curves (the classes with the most objects)",
                "errors.png": "Error breakdown", "coverage.png": "Coverage against the number of proposals"}


def _plot(p: str) -> str:
    t = _PLOT_TITLES.get(p, p.rsplit(".", 1)[0].replace("_", " "))
    return f'<h2>{_e(t)}</h2><img class="plot" src="{_e(p)}" alt="{_e(t)}">'


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def _num(v, value=None, fmt=None) -> str:
    """A table cell with the exact value in data-value."""
    shown = fmt(v) if fmt else _e(v)
    dv = v if value is None else value
    return f'<td data-value="{_e(dv)}">{shown}</td>'


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n{body}\n"
            f'<p class="note">Written {_dt.datetime.now().strftime("%Y-%m-%d %H:%M")} by googlenet-det.</p>'
            f"</body></html>\n")


def _cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{v}</b><span class="k">{_e(k)}</span></div>'
                                           for k, v in items) + "</div>"


# ------------------------------------------------------------------ thumbnails


def _thumb(image_rgb: np.ndarray, focus: np.ndarray, det: np.ndarray | None, gts: list[tuple[np.ndarray, str]],
           caption_colour, path: Path, *, height: int = 130) -> None:
    """Crop around ``focus`` (xyxy) with context, draw the ground truth (green, named) and the detection (its error
    type's colour), scale to ``height`` px, save as JPEG."""
    from PIL import Image, ImageDraw

    H, W = image_rgb.shape[:2]
    x1, y1, x2, y2 = focus
    w, h = max(x2 - x1, 8), max(y2 - y1, 8)
    pad = 0.35
    cx1, cy1 = max(0, int(x1 - pad * w)), max(0, int(y1 - pad * h))
    cx2, cy2 = min(W, int(math.ceil(x2 + pad * w))), min(H, int(math.ceil(y2 + pad * h)))
    if cx2 - cx1 < 2 or cy2 - cy1 < 2:
        cx1, cy1, cx2, cy2 = 0, 0, W, H
    crop = Image.fromarray(image_rgb[cy1:cy2, cx1:cx2])
    scale = min(height / crop.height, 3 * height / crop.width)  # at most 3 x height wide, aspect kept
    width, height = max(1, int(round(crop.width * scale))), max(1, int(round(crop.height * scale)))
    scale_x = scale
    crop = crop.resize((width, height), Image.BILINEAR)
    d = ImageDraw.Draw(crop)

    def tr(b):
        return [(b[0] - cx1) * scale_x, (b[1] - cy1) * scale, (b[2] - cx1) * scale_x, (b[3] - cy1) * scale]

    for b, name in gts:
        r = tr(b)
        # the object the thumbnail is about (a missed one) drawn heavier than its neighbours
        heavy = det is None or np.allclose(b, focus)
        d.rectangle(r, outline=(44, 160, 44), width=3 if heavy else 1)
        if name:
            d.text((r[0] + 2, r[1] + 1), name, fill=(44, 160, 44))
    if det is not None:
        d.rectangle(tr(det), outline=caption_colour, width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    crop.save(path, quality=85)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box ``a`` with boxes ``b`` [N, 4] (continuous pixels)."""
    if len(b) == 0:
        return np.zeros(0)
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _galleries(out: Path, dets, dataset, errors, classes: list[int], space, per_class: int, log) -> dict:
    """For each class: its highest-scoring false positives and its missed objects (largest first), as thumbnail
    specs; then the thumbnails, each image decoded once."""
    from detection.data.image_io import ImageDecodeError, read_image_rgb

    img_of = dets.image.numpy()
    boxes = dets.boxes.double().numpy()
    scores = dets.scores.numpy()
    labels = dets.labels.numpy()
    gt_by_image: dict[int, list[int]] = {}
    for k, i in enumerate(errors.gt_image):
        gt_by_image.setdefault(int(i), []).append(k)
    specs: list[dict] = []
    gallery: dict[int, dict] = {}
    for c in classes:
        fps = [j for j in np.nonzero((errors.fp_type != "") & (labels[errors.det_index] == c))[0]]
        fps.sort(key=lambda j: -scores[errors.det_index[j]])
        items_fp = []
        for j in fps[:per_class]:
            di = int(errors.det_index[j])
            im = int(img_of[di])
            ks = gt_by_image.get(im, [])
            gb = errors.gt_boxes[ks] if ks else np.zeros((0, 4))
            ov = _iou(boxes[di], gb)
            best = int(np.argmax(ov)) if len(ov) and ov.max() > 0 else -1
            kind = str(errors.fp_type[j])
            sub = str(errors.loc_kind[j]) if len(errors.loc_kind) else ""
            cap = f"{kind}{f' ({sub})' if sub else ''} · score {scores[di]:.2f}"
            if best >= 0:
                cap += f" · IoU {ov[best]:.2f} with {space.name(int(errors.gt_label[ks[best]]))}"
            focus = boxes[di] if best < 0 else np.r_[np.minimum(boxes[di][:2], gb[best][:2]),
                                                      np.maximum(boxes[di][2:], gb[best][2:])]
            spec = {"image": im, "focus": focus, "det": boxes[di], "gts": ks, "kind": kind, "caption": cap,
                    "file": f"report_files/c{c:03d}_fp{len(items_fp):02d}.jpg"}
            items_fp.append(spec)
            specs.append(spec)
        miss = [k for k in np.nonzero((errors.gt_label == c) & ~errors.gt_found)[0]]
        area = lambda k: float(np.prod(errors.gt_boxes[k][2:] - errors.gt_boxes[k][:2]))  # noqa: E731
        miss.sort(key=lambda k: -area(k))
        items_miss = []
        for k in miss[:per_class]:
            im = int(errors.gt_image[k])
            rec = dataset.records[im]
            # the best-scoring detection of the class on the object, if any (it was not good enough)
            on = np.nonzero((img_of == im) & (labels == c))[0]
            ov = _iou(errors.gt_boxes[k], boxes[on]) if len(on) else np.zeros(0)
            cap = f"missed · {100 * area(k) / max(1, rec.width * rec.height):.1f}% of the image"
            det = None
            if len(ov) and ov.max() > 0:
                b = int(np.argmax(ov))
                det = boxes[on[b]]
                cap += f" · best {space.name(c)} box IoU {ov[b]:.2f} (score {scores[on[b]]:.2f})"
            spec = {"image": im, "focus": errors.gt_boxes[k], "det": det, "gts": gt_by_image.get(im, []),
                    "kind": "missed", "caption": cap, "file": f"report_files/c{c:03d}_miss{len(items_miss):02d}.jpg"}
            items_miss.append(spec)
            specs.append(spec)
        gallery[c] = {"fp": items_fp, "missed": items_miss, "num_fp": len(fps), "num_missed": len(miss)}
    by_image: dict[int, list[dict]] = {}
    for s in specs:
        by_image.setdefault(s["image"], []).append(s)
    for im, ss in by_image.items():
        rec = dataset.records[im]
        try:
            rgb = read_image_rgb(rec.path)
        except ImageDecodeError as e:
            log(f"report: no thumbnails from {e}")
            for s in ss:
                s["file"] = None
            continue
        for s in ss:
            gts = [(errors.gt_boxes[k], space.name(int(errors.gt_label[k]))) for k in s["gts"]]
            _thumb(rgb, s["focus"], s["det"], gts, _TYPE_COLOURS[s["kind"]], out / s["file"])
    return gallery


# ------------------------------------------------------------------ pages


def write_report(out_dir: str | Path, *, metrics, dataset, dets=None, errors=None, info: dict | None = None,
                 plots: tuple[str, ...] = ("pr_curves.png", "errors.png"), gallery_classes: int = 40,
                 per_class: int = 6, space=None, log=print) -> Path:
    """``out_dir/report.html``: headline, per-class AP (with the error breakdown when ``errors`` is given), the
    plots found in ``out_dir``, and per class (the ``gallery_classes`` with the most objects) a gallery of its
    highest-scoring false positives and of its missed objects."""
    from detection.evaluation.report import _PROTOCOL_NAMES
    from detection.labels import det200

    space = space or det200()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    m = metrics
    classes = list(m.evaluated_classes)
    by_objects = sorted(classes, key=lambda c: (-m.npos[c], c))
    title = f"{dataset.name}: mAP {_pct(m.map)}"
    parts = [f"<h1>{_e(dataset.name)} — detection report</h1>",
             f'<div class="sub">{_e(_PROTOCOL_NAMES.get(m.protocol, m.protocol))}</div>']
    cards = [("mAP", f'<span id="map" data-value="{m.map!r}">{_pct(m.map)}</span>'),
             ("images", f'<span data-value="{m.num_images}">{m.num_images}</span>'),
             ("classes with ground truth", str(len(classes))),
             ("objects", str(sum(m.npos[c] for c in classes))),
             ("detections", str(sum(m.ndet.values())))]
    if errors is not None:
        o = errors.overall
        cards.append(("objects found (any score)", f"{100 * o['found'] / max(1, o['objects']):.1f}%"))
    parts.append(_cards(cards))
    rows = [(k, v) for k, v in info.items() if v is not None and not isinstance(v, (dict, list))]
    if rows:
        parts.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>")
    # per-class table
    has_err = errors is not None
    galleries = has_err and dets is not None and bool(classes)
    head = ["class", "wnid", "GT", "dets", "AP"] + (["TP", "duplicate", "mislocalised", "confusion", "background",
                                                      "found"] if has_err else [])
    parts.append('<h2 id="classes">Average precision per class</h2>')
    if has_err:
        parts.append(f'<p class="note">Error columns: the top {errors.top_factor:g} × objects detections of each '
                     f"class (Hoiem et al. 2012), false positives typed in priority order; found = objects matched "
                     f"at any score. Click a class for its gallery.</p>")
    t = ["<table><tr>" + "".join(f'<th class="{"l" if h in ("class", "wnid") else ""}">{h}</th>' for h in head)
         + "</tr>"]
    for c in sorted(classes, key=lambda c: -m.ap[c]):
        name = space.name(c)
        link = f'<a href="#c{c}">{_e(name)}</a>' if c in by_objects[:gallery_classes] and galleries else _e(name)
        cells = [f'<td class="l" data-class="{c}">{link}</td>', f'<td class="l">{_e(space.wnid(c))}</td>',
                 _num(m.npos[c]), _num(m.ndet[c]),
                 f'<td data-ap="{m.ap[c]!r}">{_pct(m.ap[c])}<span class="bar" style="width:{60 * m.ap[c]:.0f}px">'
                 f"</span></td>"]
        if has_err:
            v = errors.per_class.get(c, {})
            cells += [_num(v.get(k, 0)) for k in ("tp", "duplicate", "mislocalised", "confusion", "background",
                                                  "found")]
        t.append("<tr>" + "".join(cells) + "</tr>")
    t.append("</table>")
    parts.append("".join(t))
    for p in plots:
        if (out / p).is_file():
            parts.append(_plot(p))
    if has_err:
        o = errors.overall
        fp = sum(o[k] for k in ("duplicate", "mislocalised", "confusion", "background"))
        parts.append("<h2>Errors in numbers</h2><table><tr><th class='l'>top false positives</th><th>count</th>"
                     "<th>share</th></tr>" + "".join(
                         f"<tr><td class='l t-{k}'>{k}</td>{_num(o[k])}<td>{100 * o[k] / max(1, fp):.1f}%</td></tr>"
                         + ("".join(f"<tr><td class='l'>&nbsp;&nbsp;· {_e(_LOC_KIND_NAMES[q])}</td>"
                                    f"{_num(o[f'mislocalised_{q}'])}"
                                    f"<td>{100 * o[f'mislocalised_{q}'] / max(1, fp):.1f}%</td></tr>"
                                    for q in LOC_KINDS) if k == "mislocalised" else "")
                         for k in ("duplicate", "mislocalised", "confusion", "background")) + "</table>")
        parts.append("<table><tr><th class='l'>object size (share of image)</th><th>objects</th><th>found</th>"
                     "<th>missed</th><th>found %</th></tr>" + "".join(
                         f"<tr><td class='l'>{_e(k)}</td>{_num(v['objects'])}{_num(v['found'])}{_num(v['missed'])}"
                         f"<td>{100 * v['found'] / v['objects']:.1f}%</td></tr>" if v["objects"] else
                         f"<tr><td class='l'>{_e(k)}</td>{_num(0)}{_num(0)}{_num(0)}<td>–</td></tr>"
                         for k, v in errors.by_size.items()) + "</table>")
    if galleries:
        gclasses = by_objects[:gallery_classes]
        gal = _galleries(out, dets, dataset, errors, gclasses, space, per_class, log)
        parts.append(f"<h2>Galleries</h2><p class='note'>Per class (the {len(gclasses)} with the most objects): its "
                     f"highest-scoring false positives and its missed objects (largest first). Ground truth in "
                     f"green; the detection in the colour of its error type.</p>")
        for c in gclasses:
            g = gal[c]
            parts.append(f'<h3 id="c{c}">{_e(space.name(c))} — AP {_pct(m.ap[c])}, {m.npos[c]} objects</h3>')
            for key, label, total in (("fp", "top false positives", g["num_fp"]),
                                      ("missed", "missed objects", g["num_missed"])):
                items = g[key]
                parts.append(f"<div class='note'>{label}: {len(items)} shown of {total} in all (at any score)</div>"
                             f"<div class='gal'>")
                for s in items:
                    img = f'<img src="{_e(s["file"])}" alt="{_e(s["caption"])}">' if s["file"] else "(unreadable)"
                    parts.append(f"<figure>{img}<figcaption class='t-{s['kind']}'>{_e(s['caption'])}"
                                 f"<br><span class='note'>{_e(Path(dataset.records[s['image']].path).name)}</span>"
                                 f"</figcaption></figure>")
                parts.append("</div>")
    path = out / "report.html"
    atomic_write_text(path, _page(title, "\n".join(parts)))
    return path


def write_coverage_page(out_dir: str | Path, rep: dict, *, title: str, info: dict | None = None,
                        plots: tuple[str, ...] = ("coverage.png",), objects: dict | None = None, space=None) -> Path:
    """``out_dir/coverage.html``: what the proposals cover (merged and per source), the coverage-vs-count curve,
    per class (``objects``: the number of objects of each class, when known)."""
    from detection.labels import det200

    space = space or det200()
    out = Path(out_dir)
    parts = [f"<h1>{_e(title)}</h1>", '<div class="sub">proposal coverage: recall of ground truth at IoU ≥ 0.5 '
             "against the number of proposals</div>"]
    parts.append(_cards([
        ("coverage @ IoU 0.5", f'<span id="coverage" data-value="{rep["coverage@0.5"]!r}">'
                               f'{_pct(rep["coverage@0.5"])}</span>'),
        ("coverage @ IoU 0.7", _pct(rep["coverage@0.7"])),
        ("proposals / image", f'<span data-value="{rep["proposals/img"]!r}">{rep["proposals/img"]:.0f}</span>'),
        ("images", str(rep["images"])), ("objects", str(rep["gt_boxes"]))]))
    rows = [(k, v) for k, v in (info or {}).items() if v is not None and not isinstance(v, (dict, list))]
    if rows:
        parts.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>")
    parts.append("<h2>Sources</h2><table><tr><th class='l'>source</th><th>boxes / image</th><th>coverage @0.5</th>"
                 "</tr>"
                 f"<tr><td class='l'>selective search</td>{_num(rep['ss/img'], fmt=lambda v: f'{v:.0f}')}"
                 f"{_num(rep['ss_coverage@0.5'], fmt=_pct)}</tr>"
                 f"<tr><td class='l'>MultiBox</td>{_num(rep['mb/img'], fmt=lambda v: f'{v:.0f}')}"
                 f"{_num(rep['mb_coverage@0.5'], fmt=_pct)}</tr>"
                 f"<tr><td class='l'>merged</td>{_num(rep['proposals/img'], fmt=lambda v: f'{v:.0f}')}"
                 f"{_num(rep['coverage@0.5'], fmt=_pct)}</tr></table>"
                 f"<p class='note'>MultiBox adds {100 * rep['mb_adds@0.5']:+.2f} points; {rep['s/img']:.2f} s/image "
                 f"of proposal compute.</p>")
    for p in plots:
        if (out / p).is_file():
            parts.append(_plot(p))
    per = rep.get("per_class@0.5") or {}
    if per:
        parts.append("<h2>Per class</h2><table><tr><th class='l'>class</th><th>objects</th><th>coverage @0.5</th>"
                     "</tr>")
        items = [(int(k), (objects or {}).get(int(k)), v) for k, v in per.items()]
        for c, n, cov in sorted(items, key=lambda t: (t[2] if t[2] is not None else 2, t[0])):
            parts.append(f"<tr><td class='l'>{_e(space.name(c))}</td><td>{'' if n is None else n}</td>"
                         f"{_num(cov, fmt=_pct)}</tr>")
        parts.append("</table>")
    path = out / "coverage.html"
    atomic_write_text(path, _page(title, "\n".join(parts)))
    return path


def write_summary_page(sweep_dir: str | Path, rows: list[dict], *, keys: list[str], common: str,
                       page_names: tuple[str, ...] = ("report.html", "coverage.html")) -> Path:
    """``sweep_dir/summary.html``: one row per job (its swept overrides, its figures, a link to its page)."""
    sweep = Path(sweep_dir)
    parts = [f"<h1>Sweep summary — {len(rows)} jobs</h1>", f'<div class="sub">{_e(sweep)}</div>',
             f"<dl><dt>common overrides</dt><dd>{_e(common or '-')}</dd></dl>"]
    t = ["<div class='scroll'><table><tr><th class='l'>job</th><th class='l'>swept overrides</th>"
         + "".join(f"<th>{_e(k)}</th>" for k in keys) + "<th class='l'>status</th></tr>"]
    for r in rows:
        page = next((f"{r['job']}/{p}" for p in page_names if (sweep / r["job"] / p).is_file()), None)
        job = f'<a href="{_e(quote(page))}">{_e(r["job"])}</a>' if page else _e(r["job"])
        cells = []
        for k in keys:
            v = r.get(k)
            if isinstance(v, float) and (k.lower().endswith("map") or "@" in k):
                cells.append(_num(v, fmt=_pct))
            elif isinstance(v, float):
                cells.append(_num(v, fmt=lambda x: f"{x:.2f}"))
            else:
                cells.append(_num("-" if v is None else v))
        t.append(f"<tr><td class='l'>{job}</td><td class='l'>{_e(r['swept'])}</td>" + "".join(cells)
                 + f"<td class='l'>{_e(r['status'])}</td></tr>")
    t.append("</table></div>")
    parts.append("".join(t))
    path = sweep / "summary.html"
    atomic_write_text(path, _page(f"sweep summary: {sweep.name}", "\n".join(parts)))
    return path
