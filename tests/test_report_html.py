"""report.html, coverage.html, summary.html: they parse, every image and link they name exists, their numbers are
the ones in metrics.json."""
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROJECT_ROOT
from detection.data.records import DetectionDataset, ImageRecord
from detection.evaluation import Detections, evaluate, plot_pr, save_metrics
from detection.evaluation.errors import analyze_errors, plot_errors
from detection.evaluation.html import write_report, write_summary_page


class Page(HTMLParser):
    """Collects what the tests check: images, links, ids, data-* values, text; and whether tags balance."""

    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self, text: str):
        super().__init__()
        self.imgs, self.links, self.ids, self.data, self.stack, self.text = [], [], set(), [], [], []
        self.errors = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed tags: {self.stack}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "id" in a:
            self.ids.add(a["id"])
        self.data.append((tag, a))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> does not close {self.stack[-1:] or 'anything'}")
            return
        self.stack.pop()

    def handle_data(self, d):
        self.text.append(d)


def check_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "http://" not in text and "https://" not in text and "<script" not in text  # offline, self-contained
    page = Page(text)
    assert not page.errors, page.errors
    for src in page.imgs:
        assert (path.parent / src).is_file(), f"{path.name} shows a missing image {src}"
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, f"{path.name} links to a missing anchor {href}"
        else:
            assert (path.parent / href).is_file(), f"{path.name} links to a missing file {href}"
    return page


@pytest.fixture
def small_run(tmp_path):
    """Three real-looking images (noise), objects of two classes, detections with every kind of error."""
    rng = np.random.default_rng(0)
    recs = []
    gt = {0: [([20, 20, 120, 100], 59)], 1: [([10, 10, 60, 60], 124), ([100, 30, 180, 110], 59)],
          2: [([50, 40, 150, 140], 124)]}
    for i in range(3):
        p = tmp_path / "img" / f"im{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(p)
        boxes = torch.tensor([b for b, _ in gt[i]], dtype=torch.float32)
        recs.append(ImageRecord(path=p, width=200, height=160, boxes=boxes, labels=[c for _, c in gt[i]],
                                difficult=[False] * len(gt[i]), image_id=f"im{i}"))
    ds = DetectionDataset("tiny", recs)
    dets = Detections(image=[0, 0, 1, 1, 1, 2, 2], labels=[59, 59, 124, 59, 59, 124, 124],
                      boxes=torch.tensor([[20, 20, 120, 100], [22, 20, 118, 98],  # TP, duplicate
                                          [10, 10, 60, 60], [100, 30, 130, 60],  # TP, mislocalised cat
                                          [5, 120, 40, 150],  # background
                                          [20, 20, 60, 60], [10, 10, 60, 60]], dtype=torch.float32),
                      scores=[0.9, 0.8, 0.95, 0.7, 0.6, 0.5, 0.4])
    out = tmp_path / "run"
    out.mkdir()
    m = evaluate(dets, ds)
    err = analyze_errors(dets, ds)
    save_metrics(m, out / "metrics.json")
    plot_pr(m, out / "pr_curves.png")
    plot_errors(err, out / "errors.png")
    return out, ds, dets, m, err


def test_report_parses_links_exist_numbers_match(small_run):
    out, ds, dets, m, err = small_run
    path = write_report(out, metrics=m, dataset=ds, dets=dets, errors=err, info={"model": "test", "ranks": 1})
    page = check_page(path)
    saved = json.loads((out / "metrics.json").read_text())
    # the headline and every class's AP are metrics.json's values, exactly
    head = [a for t, a in page.data if a.get("id") == "map"][0]
    assert float(head["data-value"]) == saved["mAP"]
    aps = {int(a["data-class"]): None for t, a in page.data if "data-class" in a}
    ap_cells = [float(a["data-ap"]) for t, a in page.data if "data-ap" in a]
    by_label = {c["label"]: c["ap"] for c in saved["per_class"]}
    assert sorted(aps) == sorted(by_label) == [59, 124]
    assert sorted(ap_cells) == sorted(by_label.values())
    # the plots and a gallery per class: false positives typed, the missed object shown
    assert {"pr_curves.png", "errors.png"} <= set(page.imgs)
    thumbs = [s for s in page.imgs if s.startswith("report_files/")]
    text = " ".join(page.text)
    assert "duplicate · score 0.80" in text and "mislocalised (part) · score 0.70" in text and "background" in text
    # the mislocalised cat lies inside its object (a part); the numbers list the kinds (it is outside the top N)
    assert list(err.loc_kind).count("part") == 1 and "part: inside an object of its class" in text
    assert "missed · " in text
    # false positives: the cat duplicate, the cat mislocalised on im1, the cat on background, both dogs on im2
    # (background); missed: im1's cat and im2's dog
    assert len(thumbs) == 7
    fps = int(sum(err.fp_type != ""))
    missed = int((~err.gt_found).sum())
    assert len(thumbs) == fps + missed
    for t in thumbs:  # 130 px high, or 390 px wide for a wide crop: never squashed
        w, h = Image.open(out / t).size
        assert (h == 130 and w <= 390) or (w == 390 and h < 130)


def test_report_without_errors_or_detections(small_run):
    out, ds, dets, m, err = small_run
    page = check_page(write_report(out, metrics=m, dataset=ds, info={"detections": "x.json"}))
    assert not [s for s in page.imgs if s.startswith("report_files/")]
    assert float([a for t, a in page.data if a.get("id") == "map"][0]["data-value"]) == m.map


def test_summary_page_links_each_jobs_page(tmp_path):
    for j in ("0", "1"):
        (tmp_path / j).mkdir()
    (tmp_path / "0" / "report.html").write_text("<!DOCTYPE html><html></html>")
    rows = [{"job": "0", "swept": "a=1", "status": "ok", "mAP": 0.5},
            {"job": "1", "swept": "a=2", "status": "FAILED (no metrics)"}]
    page = check_page(write_summary_page(tmp_path, rows, keys=["mAP"], common="x=1"))
    assert page.links == ["0/report.html"]  # the failed job has no page to link
    assert [float(a["data-value"]) for t, a in page.data if a.get("data-value") not in (None, "-")] == [0.5]


@pytest.mark.slow
def test_eval_map_sweep_writes_reports_and_summary(shared_data, tmp_path):
    """The real thing: reference detections on voc100, two protocols; every page checked against its metrics."""
    ref = shared_data / "voc100/reference/detections_coco.json"
    r = subprocess.run([sys.executable, "tools/eval_map.py", "-m", "split=voc100", f"detections={ref}",
                        f"data_root={shared_data}", "eval.protocol=ilsvrc,voc", f"hydra.sweep.dir={tmp_path}"],
                       cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "DET_PROGRESS": "off"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = check_page(tmp_path / "summary.html")
    assert summary.links == ["0/report.html", "1/report.html"]
    for job in ("0", "1"):
        page = check_page(tmp_path / job / "report.html")
        saved = json.loads((tmp_path / job / "metrics.json").read_text())
        assert float([a for t, a in page.data if a.get("id") == "map"][0]["data-value"]) == saved["mAP"]
        ap_cells = sorted(float(a["data-ap"]) for t, a in page.data if "data-ap" in a)
        assert ap_cells == sorted(c["ap"] for c in saved["per_class"] if c["num_gt"] > 0)
        assert len([s for s in page.imgs if s.startswith("report_files/")]) > 50  # 19 classes' galleries
    maps = sorted(float(a["data-value"]) for t, a in summary.data if a.get("data-value") not in (None, "-")
                  and t == "td" and "." in a["data-value"] and float(a["data-value"]) < 1)
    assert any(abs(v - json.loads((tmp_path / "0" / "metrics.json").read_text())["mAP"]) < 1e-12 for v in maps)
