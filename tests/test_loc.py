"""Top-k localisation (ILSVRC CLS-LOC style) on hand-made cases with known answers, and against a slow reference."""
import numpy as np
import pytest
import torch

from detection.data.records import DetectionDataset, ImageRecord
from detection.evaluation import Detections, GroundTruth
from detection.evaluation.loc import format_loc, evaluate_loc


def dataset(gt, blacklist=()):
    """gt: per image a list of (label, xyxy box)."""
    recs = [ImageRecord(path=f"p{i}.jpg", width=100, height=100, boxes=[b for _, b in objs] or torch.zeros(0, 4),
                        labels=[c for c, _ in objs], difficult=[False] * len(objs), image_id=f"p{i}", exhaustive=False)
            for i, objs in enumerate(gt)]
    return GroundTruth.from_dataset(DetectionDataset("t", recs, blacklist=blacklist))


def dets(rows):
    """[(image, label, score, xyxy box)] in file order."""
    if not rows:
        return Detections.empty()
    img, lbl, score, boxes = zip(*rows)
    return Detections(img, list(boxes), score, lbl)


BOX = (10.0, 10.0, 50.0, 50.0)


def test_hand_made_photos():
    gt = dataset([[(5, BOX)], [(7, BOX)], [(9, BOX)], [(3, BOX)]])
    d = dets([
        (0, 5, 0.9, BOX),                                   # photo 0: right class and box, ranked first
        (1, 2, 0.9, BOX), (1, 2, 0.8, BOX), (1, 7, 0.7, BOX),  # photo 1: right at rank 3 -> top-5 only
        (2, 9, 0.9, (10.0, 10.0, 50.0, 90.0)),               # photo 2: right class, IoU 0.5 exactly -> localised
        (3, 3, 0.9, (10.0, 10.0, 50.0, 91.0)),               # photo 3: right class, IoU just under 0.5 -> named only
    ])
    m = evaluate_loc(d, gt)
    assert m.num_queries == 4
    assert m.localised[1] == pytest.approx(2 / 4) and m.localised[5] == pytest.approx(3 / 4)
    assert m.classified[1] == pytest.approx(3 / 4) and m.classified[5] == pytest.approx(1.0)
    assert m.per_class[5] == {3: 0.0, 5: 1.0, 7: 1.0, 9: 1.0}
    assert m.per_class[1][7] == 0.0
    assert m.classes_localised() == 3 and m.classes_localised(1) == 2
    text = format_loc(m, title="hand:", groups={"with boxes": [5, 7], "without": [3, 9], "absent": [11]})
    lines = text.splitlines()
    assert lines[1].startswith("all") and "top-5  75.00%" in lines[1] and "classes localised 3 of 4" in lines[1]
    assert lines[2].startswith("with boxes") and "localised: top-1  50.00%  top-5 100.00%" in lines[2]
    assert "classes localised 2 of 2" in lines[2]
    assert lines[3].startswith("without") and "named: top-1 100.00%" in lines[3] and "localised 1 of 2" in lines[3]
    assert not any(ln.startswith("absent") for ln in lines)  # a group without photos is not printed


def test_only_the_k_best_count_and_ties_keep_file_order():
    gt = dataset([[(4, BOX)]])
    # six wrong detections outscore the right one: it is 7th, out of the top 5
    rows = [(0, 1, 0.9 - 0.01 * j, BOX) for j in range(6)] + [(0, 4, 0.5, BOX)]
    assert evaluate_loc(dets(rows), gt).localised[5] == 0.0
    # equal scores: the earlier detection in the file ranks first
    tie = [(0, 4, 0.5, BOX), (0, 1, 0.5, BOX)]
    assert evaluate_loc(dets(tie), gt).localised[1] == 1.0
    assert evaluate_loc(dets(tie[::-1]), gt).localised[1] == 0.0
    # detections of other photos never count for this one
    assert evaluate_loc(dets([(1, 4, 0.9, BOX)]), dataset([[(4, BOX)], []])).localised[5] == 0.0


def test_several_classes_and_boxes_per_photo_and_the_blacklist():
    other = (60.0, 60.0, 90.0, 90.0)
    gt = dataset([[(2, BOX), (2, other), (6, other)], [(8, BOX)]], blacklist={(1, 8)})
    # class 2 is localised by its second box; class 6 is named on the wrong box
    m = evaluate_loc(dets([(0, 2, 0.9, other), (0, 6, 0.8, BOX), (1, 8, 0.9, BOX)]), gt)
    assert m.num_queries == 2  # (photo 0, class 2), (photo 0, class 6); photo 1's pair is blacklisted
    assert m.localised[5] == pytest.approx(0.5) and m.classified[5] == 1.0
    assert m.restrict([6]).localised[5] == 0.0 and m.restrict([2]).localised[1] == 1.0
    assert m.restrict([6]).num_queries == 1


def test_no_detections():
    m = evaluate_loc(Detections.empty(), dataset([[(1, BOX)], [(2, BOX)]]))
    assert m.localised == {1: 0.0, 5: 0.0} and m.classes_localised() == 0
    with pytest.raises(ValueError, match="positive"):
        evaluate_loc(Detections.empty(), dataset([[(1, BOX)]]), ks=(0,))


def reference_loc(rows, gt_per_image, k):
    """Slow, literal top-k localisation: per photo, sort its detections, look at the first k."""
    hits = []
    for i, objs in enumerate(gt_per_image):
        mine = sorted([(j, r) for j, r in enumerate(rows) if r[0] == i], key=lambda jr: (-jr[1][2], jr[0]))[:k]
        for c in sorted({c for c, _ in objs}):
            ok = False
            for _, (_, lbl, _, b) in mine:
                for c2, g in objs:
                    if lbl == c == c2:
                        iw = min(b[2], g[2]) - max(b[0], g[0])
                        ih = min(b[3], g[3]) - max(b[1], g[1])
                        inter = max(iw, 0) * max(ih, 0)
                        union = (b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
                        ok |= inter > 0 and inter / union >= 0.5
            hits.append(ok)
    return float(np.mean(hits))


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_slow_reference(seed):
    rng = np.random.default_rng(seed)

    def box():
        x, y = rng.integers(0, 50, 2)
        w, h = rng.integers(5, 40, 2)
        return (float(x), float(y), float(x + w), float(y + h))

    gt = [[(int(rng.integers(1, 4)), box()) for _ in range(rng.integers(1, 3))] for _ in range(8)]
    rows = []
    for i, objs in enumerate(gt):
        for _ in range(rng.integers(0, 9)):
            c, b = objs[rng.integers(len(objs))] if rng.random() < 0.6 else (int(rng.integers(1, 4)), box())
            b = tuple(v + float(rng.integers(-4, 5)) for v in b)
            b = (b[0], b[1], max(b[2], b[0] + 1), max(b[3], b[1] + 1))
            rows.append((i, c, float(rng.integers(0, 4)) / 3, b))  # few distinct scores: ties
    rows = [rows[j] for j in rng.permutation(len(rows))]
    m = evaluate_loc(dets(rows), dataset(gt), ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert m.localised[k] == pytest.approx(reference_loc(rows, gt, k))


def test_training_groups_split_the_200_classes():
    from detection.evaluation.loc import training_groups
    from detection.labels import det200

    space = det200()
    g = training_groups({space.wnid(3): [10, 0], space.wnid(7): [0, 25], space.wnid(9): [0, 0]})
    assert g["classes with training boxes"] == [3, 7]  # a class listed with no box is not trained
    without = g["classes without training boxes"]
    assert len(without) == 198 and without[0] == 1 and without[-1] == 200 and 9 in without
    assert training_groups(None) is None
