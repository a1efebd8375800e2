"""Slow, literal translations of the devkits' matching loops, to check the vectorised protocols against.

Boxes here are inclusive 1-based pixels, exactly as the devkits read them.  Detections are a list of
``(image, label, score, (xmin, ymin, xmax, ymax))`` in file order; ground truth a list per image of
``(label, box, difficult)``.
"""
import math


def vocap(rec, prec):
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def _ov(bb, bbgt):
    iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
    ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
    if iw > 0 and ih > 0:
        ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih
        return iw * ih / ua
    return None


def ilsvrc(gt, dets, blacklist=(), num_classes=200):
    """eval_detection.m: per image, by descending score, best *unmatched* gt with ov >= its own threshold."""
    npos = [0] * (num_classes + 1)
    for objs in gt:
        for lbl, _, _ in objs:
            npos[lbl] += 1
    blacklist = set(blacklist)
    by_img = [[] for _ in gt]
    for pos, d in enumerate(dets):  # sort(img_ids) is stable: file order kept within an image
        by_img[d[0]].append((pos, d))
    tp_all, conf_all, lbl_all = [], [], []
    for i, objs in enumerate(gt):
        ds = sorted(by_img[i], key=lambda t: -t[1][2])  # MATLAB sort 'descend' is stable
        thr = []
        for _, b, _ in objs:
            w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
            thr.append(min(0.5, (w * h) / ((w + 10) * (h + 10))))
        detected = [False] * len(objs)
        for _, (_, lbl, score, bb) in ds:
            if (i, lbl) in blacklist:
                continue  # ignored: neither tp nor fp
            ovmax, kmax = -math.inf, -1
            for k, (glbl, bbgt, _) in enumerate(objs):
                if glbl != lbl or detected[k]:
                    continue
                ov = _ov(bb, bbgt)
                if ov is not None and ov >= thr[k] and ov > ovmax:
                    ovmax, kmax = ov, k
            if kmax >= 0:
                detected[kmax] = True
            tp_all.append(kmax >= 0)
            conf_all.append(score)
            lbl_all.append(lbl)
        for glbl, _, _ in objs:
            if (i, glbl) in blacklist:
                npos[glbl] -= 1
    order = sorted(range(len(conf_all)), key=lambda j: -conf_all[j])  # stable
    ap = {}
    for c in range(1, num_classes + 1):
        if npos[c] == 0:
            continue
        tp = fp = 0
        rec, prec = [], []
        for j in order:
            if lbl_all[j] != c:
                continue
            tp += tp_all[j]
            fp += not tp_all[j]
            rec.append(tp / npos[c])
            prec.append(tp / (tp + fp))
        ap[c] = vocap(rec, prec)
    return ap


def voc(gt, dets, num_classes=200, min_overlap=0.5):
    """VOCevaldet.m: per class, by descending score, the gt of highest IoU; duplicates fp, difficult ignored."""
    ap = {}
    for c in range(1, num_classes + 1):
        gts = [[(b, d) for lbl, b, d in objs if lbl == c] for objs in gt]
        npos = sum(not d for objs in gts for _, d in objs)
        if npos == 0:
            continue
        cd = [d for d in dets if d[1] == c]
        cd = sorted(cd, key=lambda d: -d[2])  # stable
        detected = [[False] * len(objs) for objs in gts]
        tp, fp = [], []
        for img, _, _, bb in cd:
            ovmax, jmax = -math.inf, -1
            for j, (bbgt, _) in enumerate(gts[img]):
                ov = _ov(bb, bbgt)
                if ov is not None and ov > ovmax:
                    ovmax, jmax = ov, j
            if ovmax >= min_overlap:
                if gts[img][jmax][1]:
                    tp.append(0), fp.append(0)  # difficult: ignored
                elif not detected[img][jmax]:
                    detected[img][jmax] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        rec, prec, ctp, cfp = [], [], 0, 0
        for t, f in zip(tp, fp):
            ctp, cfp = ctp + t, cfp + f
            rec.append(ctp / npos)
            prec.append(ctp / (ctp + cfp) if ctp + cfp else float("nan"))
        prec = [0.0 if math.isnan(p) else p for p in prec]  # MATLAB's max() skips NaN; at recall 0 it adds nothing
        ap[c] = vocap(rec, prec)
    return ap
