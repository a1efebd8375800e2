"""Evaluation on the shared real data: official pycocotools figures, the voc100 reference detections, file formats."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import devkit_reference as ref
from detection.boxes import box_xyxy_to_inclusive
from detection.data import read_voc
from detection.evaluation import evaluate, read_detections, write_coco_results, write_ilsvrc_submission
from detection.evaluation.coco import coco_ap50


def quiet(f, *a):
    with contextlib.redirect_stdout(io.StringIO()):
        return f(*a)


def test_pycocotools_mode_reproduces_official_results(shared_data):
    d = shared_data / "metrics_reference" / "coco_eval"
    gt = quiet(COCO, str(d / "sampled_gts_bbox_area.json"))
    dt = quiet(gt.loadRes, str(d / "cocoapi_results.json"))
    ap50, per_cat = coco_ap50(gt, dt)
    assert ap50 == pytest.approx(0.696973, abs=1e-6)
    # and per class it is pycocotools' own default run, sliced at IoU 0.5
    ev = COCOeval(gt, dt, "bbox")
    quiet(ev.evaluate)
    quiet(ev.accumulate)
    p = ev.eval["precision"][0, :, :, 0, 2]
    for k, cat in enumerate(ev.params.catIds):
        if (p[:, k] > -1).all():
            assert per_cat[cat] == pytest.approx(p[:, k].mean(), abs=1e-12)


@pytest.fixture(scope="module")
def voc100(shared_data):
    return read_voc(shared_data / "voc100", name="voc100")


@pytest.fixture(scope="module")
def reference_dets(voc100, shared_data):
    dets, report = read_detections(shared_data / "voc100/reference/detections_coco.json", voc100)
    return dets, report


def test_reference_detections_three_protocols(voc100, reference_dets):
    dets, report = reference_dets
    # 452 detections; the 27 'bottle' ones have no DET-200 class: dropped and counted, never silently
    assert len(dets) == 425 and report.counts["detection_unmapped_class"] == 27
    gt = [[(int(c), tuple(b), bool(d)) for c, b, d in
           zip(r.labels, box_xyxy_to_inclusive(r.boxes).double().tolist(), r.difficult)] for r in voc100]
    raw = [(int(i), int(c), float(s), tuple(b)) for i, c, s, b in
           zip(dets.image, dets.labels, dets.scores, box_xyxy_to_inclusive(dets.boxes).double().tolist())]
    maps = {}
    for protocol, slow in (("ilsvrc", ref.ilsvrc), ("voc", ref.voc)):
        m = evaluate(dets, voc100, protocol=protocol)
        expected = slow(gt, raw)
        assert {c: m.ap[c] for c in m.evaluated_classes} == pytest.approx(expected, abs=1e-12)
        maps[protocol] = m.map
    maps["coco"] = evaluate(dets, voc100, protocol="coco").map
    assert len(evaluate(dets, voc100).evaluated_classes) == 19
    # the protocols differ (adaptive threshold, difficult, interpolation) but only slightly on these detections
    assert max(maps.values()) - min(maps.values()) < 0.02
    assert 0.55 < maps["ilsvrc"] < 0.7


def test_coco_mode_equals_pycocotools_on_reference_gt(voc100, reference_dets, shared_data):
    """Our coco mode on DET labels == pycocotools run directly on the reference VOC JSONs (bottle removed)."""
    dets, _ = reference_dets
    gt_json = json.loads((shared_data / "voc100/reference/ground_truth_coco.json").read_text())
    dt_json = json.loads((shared_data / "voc100/reference/detections_coco.json").read_text())
    bottle_gt = [c["id"] for c in gt_json["categories"] if c["name"] == "bottle"]
    gt_json["annotations"] = [a for a in gt_json["annotations"] if a["category_id"] not in bottle_gt]
    gt_json["categories"] = [c for c in gt_json["categories"] if c["id"] not in bottle_gt]
    # that JSON writes a VOC box (xmin..xmax, 1-based inclusive) as x=xmin, w=xmax-xmin; ours is x=xmin-1,
    # w=xmax-xmin+1 (continuous pixels covering the same pixels): put it in our frame to compare like with like
    for a in gt_json["annotations"]:
        x, y, w, h = a["bbox"]
        a["bbox"] = [x - 1, y - 1, w + 1, h + 1]
    # the reference detections use other image and category ids: translate by file name and class name
    gt_img = {im["file_name"]: im["id"] for im in gt_json["images"]}
    dt_img = {im["id"]: gt_img[im["file_name"]] for im in dt_json["images"]}
    gt_cat = {c["name"]: c["id"] for c in gt_json["categories"]}
    dt_cat = {c["id"]: c["name"] for c in dt_json["categories"]}
    results = [{"image_id": dt_img[a["image_id"]], "category_id": gt_cat[dt_cat[a["category_id"]]],
                "bbox": a["bbox"], "score": a["score"]}
               for a in dt_json["annotations"] if dt_cat[a["category_id"]] != "bottle"]
    coco_gt = COCO()
    coco_gt.dataset = gt_json
    quiet(coco_gt.createIndex)
    direct, _ = coco_ap50(coco_gt, quiet(coco_gt.loadRes, results))
    assert evaluate(dets, voc100, protocol="coco").map == pytest.approx(direct, abs=1e-9)


def test_written_files_evaluate_identically(voc100, reference_dets, tmp_path):
    dets, _ = reference_dets
    base = {p: evaluate(dets, voc100, protocol=p).map for p in ("ilsvrc", "voc", "coco")}
    write_coco_results(dets, voc100, tmp_path / "dets.json")
    write_ilsvrc_submission(dets, voc100, tmp_path / "dets.txt")
    lines = (tmp_path / "dets.txt").read_text().splitlines()
    assert len(lines) == len(dets) and len(lines[0].split()) == 7
    assert json.loads((tmp_path / "dets.json").read_text())[0].keys() == {"image_id", "category_id", "bbox", "score"}
    for name in ("dets.json", "dets.txt"):
        again, report = read_detections(tmp_path / name, voc100)
        assert len(again) == len(dets) and not report.counts
        np.testing.assert_allclose(again.boxes.numpy(), dets.boxes.numpy(), atol=1e-4)
        for p, v in base.items():
            assert evaluate(again, voc100, protocol=p).map == pytest.approx(v, abs=1e-9), (name, p)


def test_detection_files_with_problems(voc100, tmp_path):
    (tmp_path / "x.txt").write_text("1 5 0.9 10 10 50 50\n999 5 0.8 10 10 50 50\n2 201 0.7 1 1 5 5\n")
    dets, report = read_detections(tmp_path / "x.txt", voc100)
    assert len(dets) == 1 and report.counts["detection_unknown_image"] == 1
    assert report.counts["detection_unknown_class"] == 1
    (tmp_path / "bad.txt").write_text("1 5 0.9 10 10\n")
    with pytest.raises(ValueError, match=r"bad\.txt: expected 7 columns"):
        read_detections(tmp_path / "bad.txt", voc100)
    (tmp_path / "bad.json").write_text('[{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]')
    with pytest.raises(ValueError, match=r"bad\.json: detection 0 is malformed"):
        read_detections(tmp_path / "bad.json", voc100)
    with pytest.raises(FileNotFoundError, match="detections file not found"):
        read_detections(tmp_path / "none.json", voc100)
    (tmp_path / "d.csv").write_text("")
    with pytest.raises(ValueError, match="unknown detections format"):
        read_detections(tmp_path / "d.csv", voc100)
