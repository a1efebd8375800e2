"""The detector: proposals -> region-classifier ensemble -> per-class NMS -> detections in DET-200 labels.

No bounding-box regression (the paper's configuration): a detection's box is its proposal.  Boxes are
``Tensor[N, 4]`` float ``(x1, y1, x2, y2)``, absolute pixels, no +1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detection.models.backbones import is_lite
from detection.models.region import RegionEnsemble

__all__ = ["DetectorSettings", "LoadSettings", "setting", "DetectionResult", "postprocess", "soft_nms",
           "weight_sources", "box_area_share", "fuse_imagenet", "Detector", "detect_dataset", "set_threads",
           "free_cores", "process_threads"]


def setting(default, help: str):
    """A settings field: its default and what it does (the tools' ``--help`` and the docs read ``help``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class DetectorSettings:
    """How the detector scores proposals: the one place these defaults are written.

    ``load_detector(**settings)``, the Hydra tools' ``detector.*`` node and ``detect.py``'s options are built from
    these fields (one name each); :meth:`validate` runs on construction, before any weights load."""

    members: int | None = setting(None, "use the first N members of the ensemble (None: all)")
    nms_iou: float = setting(0.3, "per-class NMS IoU threshold (R-CNN's 0.3)")
    score_threshold: float = setting(0.01, "keep detections scoring at least this")
    max_per_class: int = setting(100, "detections kept per class and image")
    soft_nms_sigma: float = setting(0.0, "> 0: Gaussian soft-NMS (Bodla et al. 2017) instead of nms_iou: each "
                                         "detection's score decays by exp(-IoU^2 / sigma) under every better one of "
                                         "its class, so that crowded neighbours are ranked lower, not removed")
    flip: bool = setting(False, "also classify every proposal on the mirror image and average both views' softmax: "
                                "a second trunk pass and twice the heads' time, no gain measured (docs/classifiers.md)")
    multibox_weight: float = setting(0.5, "the class scores of MultiBox's boxes are multiplied by this (1: as the "
                                          "classifiers give them); the classifiers over-trust those boxes")
    image_sizes: tuple[int, ...] | None = setting(
        None, "multi-scale testing: shorter sides of an image pyramid, e.g. 600 1200; each proposal is classified on "
              "the level where its area is closest to 224^2 (small objects gain, at 3.4-4x the classifier's time); "
              "None: the model's own scale")
    imagenet_prior: bool = setting(True, "fuse the region classifiers' scores with the trunk's own ImageNet "
                                         "classifier folded into the 200 classes, so that classes without training "
                                         "boxes are found too (docs/all_classes.md); off: the region classifiers "
                                         "alone")
    prior_boxes: float = setting(20.0, "a class with n training boxes trusts the region classifiers n / (n + N), the "
                                       "ImageNet classifier for the rest")
    prior_area_power: float = setting(0.25, "the ImageNet evidence of a box is scaled by (box area / image area)^G, "
                                            "favouring whole objects over their parts (0: off)")
    overlap_proposals: bool = setting(True, "run selective search (OpenCV, outside the GIL) in a thread while the "
                                            "trunk runs on the other cores")
    threads: int | None = setting(0, "torch's and OpenCV's threads, set before each image: N > 0 that many; 0 adapts "
                                     "to the machine (the process's threads when idle, fewer beside busy processes); "
                                     "None: leave the process's setting")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "DetectorSettings":
        """Raise ``ValueError`` naming the first setting out of its range; normalises ``image_sizes`` to a tuple."""
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")

        if self.members is not None and (not isinstance(self.members, int) or self.members < 1):
            raise bad("members", "a whole number >= 1 or None (all)")
        if not 0.0 < self.nms_iou <= 1.0:
            raise bad("nms_iou", "in (0, 1]")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise bad("score_threshold", "in [0, 1]")
        if not isinstance(self.max_per_class, int) or self.max_per_class < 1:
            raise bad("max_per_class", "a whole number >= 1")
        if not self.soft_nms_sigma >= 0.0:
            raise bad("soft_nms_sigma", ">= 0 (0: NMS at nms_iou)")
        if not 0.0 <= self.multibox_weight <= 1.0:
            raise bad("multibox_weight", "in [0, 1]")
        if self.prior_boxes < 0:
            raise bad("prior_boxes", ">= 0")
        if self.prior_area_power < 0:
            raise bad("prior_area_power", ">= 0")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 0):
            raise bad("threads", ">= 0 (0: adapt to the machine) or None (the process's setting)")
        if self.image_sizes is not None:
            self.image_sizes = tuple(int(v) for v in self.image_sizes)
            if not self.image_sizes or min(self.image_sizes) < 1:
                raise bad("image_sizes", "positive shorter sides")
        return self


@dataclass
class LoadSettings:
    """What :func:`~detection.api.load_detector` loads: the one place these defaults are written."""

    model: str | None = setting(None, "region-classifier file (tools/train_classifier.py); None: the embedded model")
    proposals: str = setting("paper", "proposal preset (paper: selective search k x 2 + the top 200 MultiBox boxes; "
                                      "rcnn: selective search k x 1; paper_crops: MultiBox on its own trunk and "
                                      "crops) or a .yaml file shaped like detection/proposals/presets/*.yaml")
    device: str = setting("cpu", "cpu, cuda, cuda:1, ... (under torchrun, cuda means each rank's GPU)")
    backbone_weights: str | None = setting("imagenet", "trunk weights for a model file without them and for the "
                                                       "ImageNet prior: imagenet, a local .pth file, or None")
    cache_dir: str | None = setting(None, "where a dataset's proposals and detections are cached (None: "
                                          "$DET_CACHE_DIR, else the user cache folder)")


def weight_sources(probs: Tensor, source: Tensor | None, multibox_weight: float) -> Tensor:
    """``probs [N, C + 1]`` with the class columns of MultiBox's boxes (``source == 1``, the merge's tag) scaled by
    ``multibox_weight`` (background untouched); unchanged when ``source`` is ``None`` or the weight is 1."""
    if source is None or multibox_weight == 1.0:
        return probs
    source = torch.as_tensor(source).to(probs.device)
    if source.shape[0] != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} rows of scores but {source.shape[0]} source tags")
    out = probs.clone()
    out[source == 1, 1:] *= multibox_weight
    return out


def box_area_share(boxes: Tensor, height: int, width: int) -> Tensor:
    """``Tensor[N]``: each xyxy box's area as a fraction of a ``height`` x ``width`` image's (on the CPU)."""
    b = boxes.float().cpu()
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0) / float(height * width)


def fuse_imagenet(probs: Tensor, prior: Tensor, trust: Tensor, *, box_area: Tensor | None = None,
                  area_power: float = 0.0) -> Tensor:
    """The region classifiers' softmax fused with the ImageNet prior, per class by trust.

    Args:
        probs: ``Tensor[N, C + 1]`` the region classifiers' softmax, column 0 background.
        prior: ``Tensor[N, C + 1]`` the ImageNet classifier's probabilities folded into the classes
            (:meth:`~detection.models.imagenet_prior.ImageNetPrior.predict`; its column 0 is not used).
        trust: ``Tensor[C + 1]`` in [0, 1] per class (:func:`~detection.models.imagenet_prior.class_trust`).
        box_area: ``Tensor[N]`` each box's area as a fraction of the image's (needed when ``area_power > 0``).
        area_power: ``gamma``; the prior's evidence is scaled by ``box_area ** gamma`` (0: not at all).
    Returns:
        ``Tensor[N, C + 1]``: column 0 unchanged; class ``c`` scores ``1 - (1 - probs_c) * (1 - (1 - t_c) * e_c)``
        with the ImageNet evidence ``e_c = (1 - probs_0) * prior_c * box_area ** gamma``: either source may name
        the object (a noisy-OR).  The ImageNet classifier names it, the region classifiers' objectness
        ``1 - probs_0`` places it, and ``box_area ** gamma`` favours the whole object over its parts (a crop of a
        dog's head is as dog-like to an ImageNet classifier as the dog).  A class the classifiers trust fully
        (``t_c = 1``) keeps their score; one they were never shown (``t_c = 0``) is found by the prior alone.
    """
    if probs.shape != prior.shape or trust.shape[-1] != probs.shape[1]:
        raise ValueError(f"probs {tuple(probs.shape)}, prior {tuple(prior.shape)} and trust {tuple(trust.shape)} "
                         f"do not fit")
    if area_power < 0:
        raise ValueError(f"area_power must be >= 0, got {area_power}")
    evidence = (1.0 - probs[:, :1]).clamp(min=0.0) * prior[:, 1:].to(probs)
    if area_power > 0:
        if box_area is None or box_area.shape != (probs.shape[0],):
            raise ValueError(f"area_power > 0 needs box_area of shape ({probs.shape[0]},), got "
                             f"{None if box_area is None else tuple(box_area.shape)}")
        evidence = evidence * box_area.to(probs).clamp(1e-4, 1.0)[:, None] ** area_power
    t = trust[1:].to(probs)
    out = probs.clone()
    out[:, 1:] = 1.0 - (1.0 - probs[:, 1:]) * (1.0 - (1.0 - t) * evidence)
    return out


@dataclass
class DetectionResult:
    """Detections of one image: ``boxes [D, 4]`` xyxy pixels, ``scores [D]``, ``labels [D]`` DET-200 (1..200), best
    first; ``seconds`` per stage (``proposals``, ``classify``, ``nms``); ``num_proposals``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num_proposals: int = 0
    seconds: dict = field(default_factory=dict)


def postprocess(boxes: Tensor, probs: Tensor, *, nms_iou: float = 0.3, max_per_class: int = 100,
                score_threshold: float = 0.01, soft_nms_sigma: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS of class scores.

    Args:
        boxes: ``Tensor[N, 4]`` proposals.  probs: ``Tensor[N, C + 1]`` softmax, column 0 background.
    Returns:
        (boxes ``[D, 4]``, scores ``[D]``, labels ``[D]`` in 1..C), by descending score; every (proposal, class)
        with a score >= ``score_threshold`` is a candidate, NMS at ``nms_iou`` runs within each class, and each
        class keeps at most ``max_per_class`` boxes.  ``soft_nms_sigma > 0``: Gaussian soft-NMS instead
        (:func:`soft_nms`), detections whose decayed score falls under ``score_threshold`` dropped.
    """
    if probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {probs.shape[0]} rows of scores")
    cls_scores = probs[:, 1:].float()
    idx, cls = torch.nonzero(cls_scores >= score_threshold, as_tuple=True)
    if idx.numel() == 0:
        return boxes.new_zeros((0, 4)).float(), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    b, s, lab = boxes[idx].float(), cls_scores[idx, cls], cls + 1
    if soft_nms_sigma > 0:
        keep, s = soft_nms(b, s, lab, sigma=soft_nms_sigma, score_threshold=score_threshold)
    else:
        keep = batched_nms(b, s, lab, nms_iou)  # sorted by decreasing score
        s = s[keep]
    b, lab = b[keep], lab[keep]
    if max_per_class > 0:
        # rank of each detection within its class (detections are already sorted by score)
        order = torch.argsort(lab, stable=True)
        sorted_lab = lab[order]
        first = torch.searchsorted(sorted_lab, sorted_lab, side="left")
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - first
        ok = rank < max_per_class
        b, s, lab = b[ok], s[ok], lab[ok]
    return b, s, lab


def soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, *, sigma: float, score_threshold: float
             ) -> tuple[Tensor, Tensor]:
    """Gaussian soft-NMS within each label (Bodla et al. 2017): repeatedly take the best remaining box and multiply
    every other remaining score of its label by ``exp(-IoU^2 / sigma)``; a box whose score falls under
    ``score_threshold`` is dropped.  Returns (indices kept, their decayed scores), by decreasing decayed score."""
    from torchvision.ops import box_iou

    kept, kept_scores = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        decay = torch.exp(-box_iou(boxes[idx], boxes[idx]).double().pow(2) / sigma).numpy()
        s = scores[idx].double().numpy().copy()
        alive = np.ones(len(s), dtype=bool)
        for _ in range(len(s)):
            i = int(np.argmax(np.where(alive, s, -1.0)))
            if not alive[i] or s[i] < score_threshold:
                break
            kept.append(int(idx[i]))
            kept_scores.append(s[i])
            alive[i] = False
            s *= decay[i]
    if not kept:
        return torch.zeros(0, dtype=torch.long), scores.new_zeros(0)
    keep, sc = torch.tensor(kept), torch.tensor(kept_scores, dtype=scores.dtype)
    order = torch.argsort(sc, descending=True, stable=True)
    return keep[order], sc[order]


class Detector:
    """Proposals (a ``ProposalStage`` or given boxes) -> ensemble (fused with the ImageNet prior) ->
    :func:`postprocess`.

    ``prior``: the :class:`~detection.models.imagenet_prior.ImageNetPrior` to use when ``settings.imagenet_prior``
    (default: built from the classifier's backbone with its ImageNet weights, ``backbone_weights``).  The per-class
    trust comes from the classifier's training box counts (``classifier.class_boxes``); a model without them cannot
    use the prior (a ``ValueError`` says so).
    """

    def __init__(self, *, classifier: RegionEnsemble, proposals=None, settings: DetectorSettings | None = None,
                 prior=None, backbone_weights="imagenet"):
        self.classifier = classifier.eval()
        self.proposals = proposals
        self.settings = settings or DetectorSettings()
        classifier.check_image_sizes(self.settings.image_sizes)  # a warp-mode model: said now, not at the first image
        # threads=0 adapts up to the threads the process had (OMP_NUM_THREADS, torchrun's one a rank, set_num_threads)
        self._thread_cap = process_threads()
        if self.settings.threads:
            set_threads(self.settings.threads)
        mb = getattr(proposals, "mb", None)
        # a MultiBox head on the classifiers' trunk reads their pass over the image: it must be their trunk
        self.shared_multibox = mb if mb is not None and getattr(mb, "shared", False) else None
        if self.shared_multibox is not None:
            self.shared_multibox.check_trunk(classifier)
        self._pool = None  # the thread selective search runs in (overlap_proposals)
        self.last_threads: int | None = None
        self.prior, self.trust = None, None
        if self.settings.imagenet_prior:
            from detection.models.imagenet_prior import build_imagenet_prior, class_trust

            if classifier.class_boxes is None:
                raise ValueError("imagenet_prior needs the classifier's training box counts per class "
                                 "(record['class_boxes'], written by tools/train_classifier.py, or a "
                                 "<model>.class_boxes.json beside the file); this model has none: turn the ImageNet "
                                 "prior off (imagenet_prior=False)")
            if prior is None and backbone_weights is None:
                raise ValueError("imagenet_prior needs the backbone's ImageNet weights (backbone_weights='imagenet' "
                                 "or a local .pth file), not None")
            self.trust = class_trust(classifier.class_boxes, prior_boxes=self.settings.prior_boxes)
            self._trusts = {self.settings.prior_boxes: self.trust}  # Detector.score's variants add theirs
            c = classifier.cfg
            try:
                self.prior = prior if prior is not None else build_imagenet_prior(
                    backbone=c.backbone, weights=backbone_weights, image_size=c.image_size,
                    max_image_size=c.max_image_size, max_upscale=c.max_upscale, device=classifier.device)
            except (RuntimeError, FileNotFoundError) as e:
                raise type(e)(f"the ImageNet prior needs {c.backbone}'s ImageNet weights: {e}  Or turn the prior "
                              f"off: imagenet_prior=False (load_detector), detector.imagenet_prior=false "
                              f"(eval_map.py), --no-imagenet-prior (detect.py)") from e
        # the classifiers' stride-16 map is ImageNet's own when the fine-tuned stages all come after it
        c = classifier.cfg
        self.prior_shares_mid = (self.prior is not None and prior is None and is_lite(c.backbone)
                                 and c.shared_trunk and c.mode == "roi"
                                 and _mid_is_frozen(classifier))

    def _propose_shared(self, image_rgb: np.ndarray, seconds: dict) -> tuple[Tensor, Tensor, tuple, tuple]:
        """Proposals from one trunk pass: the classifiers' trunk runs on the image at their scale, the MultiBox head
        reads its maps, selective search runs meanwhile (in a thread with ``overlap_proposals``), and the pass is
        returned for the classifiers to pool from and the ImageNet prior to continue from: ``(boxes, source tags,
        (x, scale, roi map), (scale, stride-16 map))``."""
        stage, clf = self.proposals, self.classifier

        def run_ss():
            t = time.perf_counter()
            out = stage.ss(image_rgb)[0]
            return out, time.perf_counter() - t

        future = None
        if self.settings.overlap_proposals:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="selective-search")
            future = self._pool.submit(run_ss)
        t = time.perf_counter()
        n = torch.get_num_threads()
        # selective search holds a core meanwhile: the trunk takes the others, so that its threads do not spin at
        # every barrier waiting for one that shares selective search's core
        trunk_threads = overlap_threads(n) if future is not None and self.settings.threads is not None else n
        try:
            if trunk_threads != n:
                torch.set_num_threads(trunk_threads)
            with torch.inference_mode():
                x, scale = clf.prepare_image(image_rgb)
                last, mid, *fine = clf.trunk_maps(x[None], fine=self.shared_multibox.fine_level)
                t_trunk = time.perf_counter()
                h, w = image_rgb.shape[:2]
                mb_boxes, mb_scores = self.shared_multibox.from_maps(last, mid, *fine, width=w, height=h)
        finally:
            if trunk_threads != n:
                torch.set_num_threads(n)
        t_mb = time.perf_counter()
        ss_boxes, t_ss = future.result() if future is not None else run_ss()
        seconds.update(trunk=t_trunk - t, multibox=t_mb - t_trunk, selective_search=t_ss)
        if future is not None:
            seconds["selective_search_wait"] = time.perf_counter() - t_mb
        boxes, source = stage.merge(ss_boxes, mb_boxes, mb_scores)
        return boxes, source, (x, scale, last), (scale, mid)

    def score(self, boxes: Tensor, probs: Tensor, *, source: Tensor | None = None, prior: Tensor | None = None,
              box_area: Tensor | None = None, settings: DetectorSettings | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
        """From the classifiers' softmax over ``boxes`` to detections, exactly as :meth:`detect` does: the ImageNet
        prior fused in (``prior [N, C + 1]`` and ``box_area [N]`` from :attr:`prior`; ``None``: off), MultiBox's boxes
        weighted by their ``source`` tags, per-class NMS and the score floor.  ``settings``: another variant's
        scoring settings (members, flip and image sizes act before this step); ``None``: the detector's.
        Returns ``(boxes, scores, labels)`` as :func:`postprocess`."""
        st = settings or self.settings
        return self.nms(boxes, self.class_scores(probs, source=source, prior=prior, box_area=box_area, settings=st),
                        settings=st)

    def nms(self, boxes: Tensor, scores: Tensor, *, settings: DetectorSettings | None = None
            ) -> tuple[Tensor, Tensor, Tensor]:
        """The last step of :meth:`score`: :func:`postprocess` of the class scores from :meth:`class_scores` with the
        detector's (or ``settings``') NMS, cap and score floor."""
        st = settings or self.settings
        return postprocess(boxes.float().cpu(), scores, nms_iou=st.nms_iou, max_per_class=st.max_per_class,
                           score_threshold=st.score_threshold, soft_nms_sigma=st.soft_nms_sigma)

    def class_scores(self, probs: Tensor, *, source: Tensor | None = None, prior: Tensor | None = None,
                     box_area: Tensor | None = None, settings: DetectorSettings | None = None) -> Tensor:
        """The class scores :meth:`score` hands to NMS (``[N, C + 1]``): the classifiers' softmax with the ImageNet
        prior fused in and MultiBox's boxes weighted (same arguments)."""
        st = settings or self.settings
        if prior is not None:
            if self.trust is None:
                raise ValueError("a prior was given but this detector was built with imagenet_prior=False")
            probs = fuse_imagenet(probs, prior, self._trust_for(st.prior_boxes), box_area=box_area.to(probs.device),
                                  area_power=st.prior_area_power)
        return weight_sources(probs, source, st.multibox_weight)

    def prior_evidence(self, image_rgb: np.ndarray, boxes: Tensor, probs: Tensor, *,
                       mid: tuple | None = None) -> tuple[Tensor | None, Tensor | None]:
        """The ImageNet prior's input to :meth:`score` for ``boxes`` of ``image_rgb`` whose softmax is ``probs``:
        ``(prior [N, C + 1], box_area [N])``, or ``(None, None)`` without a prior.  ``mid``: the classifiers'
        ``(scale, stride-16 map)`` of the image, which the prior continues from when it shares those layers."""
        if self.prior is None:
            return None, None
        prior = torch.zeros_like(probs)
        # a fused score is at most probs_c + evidence_c <= 2 * objectness, so a box whose objectness is under
        # half the score floor yields no detection either way: the prior is computed for the others only
        need = (1.0 - probs[:, 0]) >= 0.5 * self.settings.score_threshold
        if need.any():
            # the prior's ImageNet layers up to the stride-16 map are the classifiers' frozen ones: their pass
            # serves it (lite0 with its later stages fine-tuned)
            prior[need] = self.prior.predict(image_rgb, boxes[need.to(boxes.device)],
                                             mid=mid if self.prior_shares_mid else None)
        return prior, box_area_share(boxes, *image_rgb.shape[:2])

    def _trust_for(self, prior_boxes: float) -> Tensor:
        """The per-class trust for ``prior_boxes``: computed once per value, not per image."""
        if prior_boxes not in self._trusts:
            from detection.models.imagenet_prior import class_trust

            self._trusts[prior_boxes] = class_trust(self.classifier.class_boxes, prior_boxes=prior_boxes)
        return self._trusts[prior_boxes]

    def detect(self, image_rgb: np.ndarray, *, boxes: Tensor | None = None, source: Tensor | None = None
               ) -> DetectionResult:
        """Detect objects in one ``uint8[H, W, 3]`` RGB image; ``boxes``: precomputed proposals (else the stage's),
        ``source``: their merge tags (1: MultiBox, weighted by ``settings.multibox_weight``; ``None``: no weighting)."""
        t0 = time.perf_counter()
        seconds = {}
        if self.settings.threads is not None:
            n = self.settings.threads or max(1, min(self._thread_cap, free_cores()))
            if torch.get_num_threads() != n:
                set_threads(n)
            self.last_threads = n  # what the last image ran on
        view = mid = None
        if boxes is None:
            if self.proposals is None:
                raise ValueError("no proposals: pass boxes= or build the Detector with a proposal stage")
            if self.shared_multibox is not None:
                boxes, source, view, mid = self._propose_shared(image_rgb, seconds)
            else:
                boxes, source = self.proposals.propose(image_rgb)
                seconds.update(getattr(self.proposals, "last_seconds", {}))
            seconds["proposals"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        probs = self.classifier.predict(image_rgb, boxes, members=self.settings.members, flip=self.settings.flip,
                                        image_sizes=self.settings.image_sizes, view=view)
        if self.prior is not None:
            t = time.perf_counter()
            prior, area = self.prior_evidence(image_rgb, boxes, probs, mid=mid)
            seconds["imagenet_prior"] = time.perf_counter() - t
        else:
            prior = area = None
        t2 = time.perf_counter()
        b, s, lab = self.score(boxes, probs, source=source, prior=prior, box_area=area)
        seconds.update(classify=t2 - t1, nms=time.perf_counter() - t2)
        seconds.update({f"classify.{k}": v for k, v in self.classifier.last_seconds.items()})
        return DetectionResult(boxes=b, scores=s, labels=lab, num_proposals=int(boxes.shape[0]), seconds=seconds)


def _mid_is_frozen(classifier: RegionEnsemble) -> bool:
    """True when the classifiers' trunk up to its stride-16 map (``spec.mid_layer``) is ImageNet's, untouched: its
    fine-tuned stages (``trainable_stages``) all come after that layer."""
    from detection.models.region import stem_stages

    bb = classifier.backbones[0]
    stages = stem_stages(bb)
    tuned = stages[len(stages) - classifier.cfg.trainable_stages:] if classifier.cfg.trainable_stages else []
    return bb.spec.mid_layer in stages and all(stages.index(t) > stages.index(bb.spec.mid_layer) for t in tuned)


def free_cores(samples: int = 3) -> int:
    """How many of this process's cores no other process is running on now: the cores it may use minus the
    runnable tasks of other processes (Linux: ``/proc/loadavg``'s runnable count less this process's running
    threads; the median of ``samples`` looks 2 ms apart).  Elsewhere: all its cores."""
    import glob
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not os.path.exists("/proc/loadavg"):
        return cores
    looks = []
    for i in range(samples):
        if i:
            time.sleep(0.002)
        try:
            running = int(open("/proc/loadavg").read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return cores
        own = 0
        for f in glob.glob("/proc/self/task/*/stat"):
            try:
                stat = open(f).read()
            except OSError:  # a thread that ended meanwhile
                continue
            own += stat[stat.rindex(")") + 2] == "R"
        looks.append(cores - max(0, running - own))
    return max(0, sorted(looks)[len(looks) // 2])


_threads = {"process": None, "set": None}  # the process's own thread count; the last count set_threads set


def process_threads() -> int:
    """The threads this process had before any detector adapted them: torch's count now, unless that is the count
    :func:`set_threads` last set (then the count it had before)."""
    now = torch.get_num_threads()
    if _threads["process"] is None or now != _threads["set"]:
        _threads["process"] = now
    return _threads["process"]


def overlap_threads(threads: int) -> int:
    """torch's threads for the trunk while selective search runs in its thread, of ``threads`` in all: one fewer
    (at least one)."""
    return max(1, threads - 1)


def set_threads(threads: int) -> None:
    """torch's intra-op threads and OpenCV's, process-wide."""
    import cv2

    process_threads()  # remember the process's own count first
    torch.set_num_threads(int(threads))
    cv2.setNumThreads(int(threads))
    _threads["set"] = int(threads)


def detect_dataset(detector: Detector, dataset, proposals: list, *, progress: bool = True, log=print):
    """Run ``detector`` over every image of ``dataset`` with precomputed ``proposals``, one per record: an entry of
    :meth:`~detection.proposals.pipeline.ProposalStage.load` (``{"boxes", "source", ...}``: MultiBox's boxes are weighted by
    their tags), a bare ``Tensor[N, 4]`` of boxes (no tags, no weighting), or ``None``.

    Returns ``(Detections, stats)``; images that cannot be read or have no proposals are skipped, counted in
    ``stats["skipped"]`` (a list of messages) and reported through ``log``.  ``stats`` also sums the seconds per stage.
    """
    from detection.progress import progress as progress_bar

    from detection.data.image_io import ImageDecodeError, read_image_rgb
    from detection.evaluation.detections import Detections

    per_image, positions, skipped = [], [], []
    seconds = {"read": 0.0, "classify": 0.0, "nms": 0.0}
    n_props = 0
    for i, (r, props) in enumerate(progress_bar(list(zip(dataset.records, proposals)), desc=f"detect {dataset.name}",
                                        unit="img", disable=not progress)):
        if props is None:
            skipped.append(f"{r.path}: no proposals")
            continue
        t0 = time.perf_counter()
        try:
            img = read_image_rgb(r.path)
        except ImageDecodeError as e:
            skipped.append(str(e))
            continue
        seconds["read"] += time.perf_counter() - t0
        boxes, source = (props["boxes"], props["source"]) if isinstance(props, dict) else (props, None)
        res = detector.detect(img, boxes=boxes, source=source)
        for k in ("classify", "nms"):
            seconds[k] += res.seconds[k]
        n_props += res.num_proposals
        per_image.append((res.boxes, res.scores, res.labels))
        positions.append(i)
    for s in skipped:
        log(f"detect: skipped {s}")
    dets = Detections.from_per_image(per_image, positions)
    return dets, {"images": len(positions), "positions": positions, "skipped": skipped, "seconds": seconds,
                  "proposals_per_image": n_props / max(len(positions), 1)}
