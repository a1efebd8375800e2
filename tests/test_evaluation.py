import math

import numpy as np
import pytest

import devkit_reference as ref
from detection.boxes import box_inclusive_to_xyxy
from detection.data.records import DetectionDataset, ImageRecord
from detection.evaluation import Detections, GroundTruth, evaluate, evaluate_ilsvrc, evaluate_voc, voc_ap
from detection.evaluation.protocols import ilsvrc_iou_threshold


def make_dataset(gt, blacklist=()):
    """gt: per image list of (label, inclusive box, difficult) -> DetectionDataset."""
    recs = []
    for i, objs in enumerate(gt):
        boxes = box_inclusive_to_xyxy([b for _, b, _ in objs])
        recs.append(ImageRecord(path=f"img{i}.jpg", width=1000, height=1000, boxes=boxes,
                                labels=[lbl for lbl, _, _ in objs], difficult=[d for _, _, d in objs],
                                image_id=f"img{i}"))
    return DetectionDataset("t", recs, blacklist=blacklist)


def make_dets(dets):
    """[(image, label, score, inclusive box)] -> Detections (file order kept)."""
    if not dets:
        return Detections.empty()
    img, lbl, score, boxes = zip(*dets)
    return Detections(img, box_inclusive_to_xyxy(list(boxes)), score, lbl)


def random_case(seed, n_img=6, n_cls=4, max_gt=6, max_det=25):
    rng = np.random.default_rng(seed)

    def box():
        x, y = rng.integers(1, 60, 2)
        w, h = rng.integers(1, 40, 2)  # many small boxes: adaptive thresholds well below 0.5
        return (int(x), int(y), int(x + w - 1), int(y + h - 1))

    gt = [[(int(rng.integers(1, n_cls + 1)), box(), bool(rng.random() < 0.2))
           for _ in range(rng.integers(0, max_gt + 1))] for _ in range(n_img)]
    dets = []
    for i in range(n_img):
        for _ in range(rng.integers(0, max_det + 1)):
            if gt[i] and rng.random() < 0.6:  # jitter a ground-truth box: IoUs all around the thresholds
                lbl, b, _ = gt[i][rng.integers(len(gt[i]))]
                j = rng.integers(-3, 4, 4)
                b = (b[0] + j[0], b[1] + j[1], max(b[0] + j[0], b[2] + j[2]), max(b[1] + j[1], b[3] + j[3]))
                if rng.random() < 0.2:
                    lbl = int(rng.integers(1, n_cls + 1))
            else:
                lbl, b = int(rng.integers(1, n_cls + 1)), box()
            dets.append((i, lbl, float(rng.integers(0, 6)) / 5, b))  # few distinct scores: many ties
    dets = [dets[j] for j in rng.permutation(len(dets))]  # file order interleaves images, as real files may
    blacklist = {(int(rng.integers(n_img)), int(rng.integers(1, n_cls + 1))) for _ in range(rng.integers(0, 3))}
    return gt, dets, blacklist


def assert_same_ap(metrics, expected):
    got = {c: metrics.ap[c] for c in metrics.evaluated_classes}
    assert got.keys() == expected.keys()
    for c in expected:
        assert got[c] == pytest.approx(expected[c], abs=1e-12), c
    if expected:
        assert metrics.map == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    for c, ap in metrics.ap.items():
        if c not in expected:
            assert math.isnan(ap)


@pytest.mark.parametrize("seed", range(60))
def test_ilsvrc_matches_devkit_reference(seed):
    gt, dets, blacklist = random_case(seed)
    m = evaluate(make_dets(dets), make_dataset(gt, blacklist), protocol="ilsvrc")
    assert_same_ap(m, ref.ilsvrc(gt, dets, blacklist))


@pytest.mark.parametrize("seed", range(60))
def test_voc_matches_devkit_reference(seed):
    gt, dets, _ = random_case(seed)
    m = evaluate(make_dets(dets), make_dataset(gt), protocol="voc")
    assert_same_ap(m, ref.voc(gt, dets))


def test_voc_ap_known_values():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert voc_ap(np.array([0.0, 0.5]), np.array([0.0, 0.5])) == pytest.approx(0.25)
    assert voc_ap(np.array([]), np.array([])) == 0.0


BIG = (1, 1, 100, 100)  # 100 x 100 inclusive pixels


def test_iou_exactly_at_threshold_counts():
    gt = [[(1, BIG, False)]]
    half = (1, 1, 100, 50)  # IoU = 5000 / 10000 = 0.5 exactly
    assert evaluate(make_dets([(0, 1, 0.9, half)]), make_dataset(gt)).ap[1] == 1.0
    below = (1, 1, 100, 49)  # IoU 0.49
    assert evaluate(make_dets([(0, 1, 0.9, below)]), make_dataset(gt)).ap[1] == 0.0
    assert evaluate(make_dets([(0, 1, 0.9, half)]), make_dataset(gt), protocol="voc").ap[1] == 1.0


def test_adaptive_threshold_for_small_objects():
    small = (1, 1, 10, 10)  # 10 x 10: threshold 100 / (20 * 20) = 0.25
    assert ilsvrc_iou_threshold(box_inclusive_to_xyxy([small]).double().numpy()) == pytest.approx([0.25])
    tall = (1, 1, 10, 40)  # IoU with the small box = 100 / 400 = 0.25 exactly
    gt, dets = [[(1, small, False)]], [(0, 1, 0.9, tall)]
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="ilsvrc").ap[1] == 1.0
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="voc").ap[1] == 0.0  # fixed 0.5 in VOC
    just_below = (1, 1, 10, 41)
    assert evaluate(make_dets([(0, 1, 0.9, just_below)]), make_dataset(gt), protocol="ilsvrc").ap[1] == 0.0


def test_best_unmatched_vs_voc_duplicate():
    """ILSVRC takes the best *unmatched* box; VOC takes the best box and calls it a duplicate if matched."""
    a, b = (1, 1, 100, 100), (31, 1, 130, 100)
    gt = [[(1, a, False), (1, b, False)]]
    d1 = (21, 1, 120, 100)  # IoU a: 80/120 = 0.667, b: 90/110 = 0.818 -> takes b
    d2 = (26, 1, 125, 100)  # IoU a: 75/125 = 0.6, b: 95/105 = 0.905 (b taken) -> ILSVRC: a; VOC: duplicate
    dets = [(0, 1, 0.9, d1), (0, 1, 0.8, d2)]
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="ilsvrc").ap[1] == 1.0
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="voc").ap[1] == 0.5


def test_iou_ties_go_to_the_first_ground_truth():
    """Both devkits keep the first box of equal IoU (strict '>'); which one is taken decides the next match."""
    gt = [[(1, (1, 1, 100, 100), False), (1, (51, 1, 150, 100), False)]]
    d1 = (26, 1, 125, 100)  # IoU 0.6 with both
    d2 = (1, 1, 100, 100)  # the first box exactly; IoU 1/3 with the second
    dets = [(0, 1, 0.9, d1), (0, 1, 0.8, d2)]
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="ilsvrc").ap[1] == pytest.approx(0.5)
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="voc").ap[1] == pytest.approx(0.5)
    swapped = [[gt[0][1], gt[0][0]]]  # now d1 takes (51..150) and d2 the free first box
    assert evaluate(make_dets(dets), make_dataset(swapped), protocol="ilsvrc").ap[1] == pytest.approx(1.0)
    assert evaluate(make_dets(dets), make_dataset(swapped), protocol="voc").ap[1] == pytest.approx(1.0)


def test_duplicates_order_and_ties():
    gt = [[(1, BIG, False)]]
    # the false positive outranks the true positive: precision 1/2 at full recall
    m = evaluate(make_dets([(0, 1, 0.9, (500, 500, 600, 600)), (0, 1, 0.8, BIG)]), make_dataset(gt))
    assert m.ap[1] == pytest.approx(0.5) and m.ndet[1] == 2 and m.npos[1] == 1
    # equal scores: the devkit's stable sort keeps file order, so the first listed wins the match
    m = evaluate(make_dets([(0, 1, 0.5, (500, 500, 600, 600)), (0, 1, 0.5, BIG)]), make_dataset(gt))
    assert m.ap[1] == pytest.approx(0.5)
    m = evaluate(make_dets([(0, 1, 0.5, BIG), (0, 1, 0.5, (500, 500, 600, 600))]), make_dataset(gt))
    assert m.ap[1] == pytest.approx(1.0)


def test_blacklist_ignores_both_sides():
    gt = [[(1, BIG, False)], [(1, BIG, False), (2, BIG, False)]]
    dets = [(0, 1, 0.9, BIG), (1, 1, 0.95, (500, 500, 600, 600)), (1, 2, 0.9, BIG)]
    plain = evaluate(make_dets(dets), make_dataset(gt))
    assert plain.npos[1] == 2 and plain.ap[1] == pytest.approx(0.25)  # fp first, then 1 of 2
    bl = evaluate(make_dets(dets), make_dataset(gt, blacklist={(1, 1)}))
    assert bl.npos[1] == 1 and bl.ap[1] == 1.0 and bl.ap[2] == 1.0
    assert "1 detections on blacklisted" in bl.notes[0]


def test_difficult_ignored_only_by_voc():
    gt = [[(1, BIG, True), (1, (300, 300, 400, 400), False)]]
    dets = [(0, 1, 0.9, BIG), (0, 1, 0.8, (300, 300, 400, 400))]
    voc = evaluate(make_dets(dets), make_dataset(gt), protocol="voc")
    assert voc.npos[1] == 1 and voc.ap[1] == 1.0 and "1 detections matching difficult" in voc.notes[0]
    assert evaluate(make_dets(dets), make_dataset(gt), protocol="ilsvrc").npos[1] == 2


def test_empty_inputs():
    gt = [[(1, BIG, False)], [], [(3, BIG, False)]]
    for protocol in ("ilsvrc", "voc", "coco"):
        m = evaluate(Detections.empty(), make_dataset(gt), protocol=protocol)
        assert m.evaluated_classes == [1, 3] and m.map == 0.0, protocol
        assert math.isnan(m.ap[2])
    m = evaluate(make_dets([(1, 2, 0.9, BIG)]), make_dataset(gt))  # detections of a class without ground truth
    assert m.map == 0.0 and m.ndet[2] == 1
    empty = make_dataset([[], []])
    assert math.isnan(evaluate(Detections.empty(), empty).map)


def test_bad_detections_are_rejected():
    gt = make_dataset([[(1, BIG, False)]])
    with pytest.raises(ValueError, match="labels must be in 1..200"):
        evaluate(make_dets([(0, 0, 0.9, BIG)]), gt)
    with pytest.raises(ValueError, match="image positions"):
        evaluate(make_dets([(3, 1, 0.9, BIG)]), gt)
    with pytest.raises(ValueError, match="non-finite"):
        Detections([0], [[0, 0, 1, 1]], [float("nan")], [1])


def test_matching_is_independent_of_input_grouping():
    """Shuffling the detection list (distinct scores) changes nothing."""
    gt, dets, bl = random_case(123, max_det=40)
    dets = [(i, c, s + 1e-3 * k, b) for k, (i, c, s, b) in enumerate(dets)]
    perm = np.random.default_rng(0).permutation(len(dets))
    a = evaluate_ilsvrc(make_dets(dets), GroundTruth.from_dataset(make_dataset(gt, bl)))
    b = evaluate_ilsvrc(make_dets([dets[j] for j in perm]), GroundTruth.from_dataset(make_dataset(gt, bl)))
    assert a.ap.keys() == b.ap.keys() and all(a.ap[c] == b.ap[c] or math.isnan(a.ap[c]) for c in a.ap)
    assert evaluate_voc(make_dets(dets), GroundTruth.from_dataset(make_dataset(gt))).map == pytest.approx(
        evaluate_voc(make_dets([dets[j] for j in perm]), GroundTruth.from_dataset(make_dataset(gt))).map)


def test_coco_mode_agrees_on_clean_case():
    """Perfect detections: every protocol gives AP 1."""
    gt = [[(1, (11, 11, 60, 80), False), (2, (101, 101, 300, 250), False)], [(1, (1, 1, 500, 400), False)]]
    dets = [(i, lbl, 0.9, b) for i, objs in enumerate(gt) for lbl, b, _ in objs]
    for protocol in ("ilsvrc", "voc", "coco"):
        assert evaluate(make_dets(dets), make_dataset(gt), protocol=protocol).map == pytest.approx(1.0)


def test_pr_plot_with_a_class_that_has_no_detections(tmp_path):
    from detection.evaluation import plot_pr
    from detection.evaluation.protocols import Metrics

    m = Metrics(protocol="ilsvrc", ap={1: 0.0, 2: 0.5}, npos={1: 3, 2: 2}, ndet={1: 0, 2: 2}, map=0.25, num_images=1,
                curves={1: (np.zeros(0), np.zeros(0)), 2: (np.array([0.5, 0.5]), np.array([1.0, 0.5]))})
    plot_pr(m, tmp_path / "pr.png")
    assert (tmp_path / "pr.png").stat().st_size > 5000
