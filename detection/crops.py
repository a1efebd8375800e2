"""R-CNN region crops: each box enlarged by context padding, warped anisotropically to ``size x size``, batched.

R-CNN (Girshick et al. 2014, appendix A): enlarge the box so that, at the warped size, ``padding`` pixels of image
context surround it on every side -- the box is scaled about its centre by ``size / (size - 2 * padding)`` along each
axis (224 / 192 for GoogLeNet) -- then warp that window to ``size x size`` with bilinear interpolation; where the
window leaves the image the crop takes the mean colour.

All crops of an image are made at once with ``torchvision.ops.roi_align`` (one bilinear sample at the centre of each
output pixel, ``sampling_ratio=1``, ``aligned=True``) on the *normalised* image, in which the mean colour is 0.  The
image is padded with one pixel of zeros first, so that samples just outside the image blend towards the mean colour
exactly as a bilinear interpolation over an image surrounded by mean colour does (roi_align alone would repeat the
border pixel there).

Boxes are ``Tensor[N, 4]`` float ``(x1, y1, x2, y2)`` in absolute continuous pixels, no +1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["context_boxes", "warp_crops", "warp_crops_reference"]


def context_boxes(boxes: Tensor, *, size: int = 224, padding: int = 16) -> Tensor:
    """``Tensor[N, 4]`` xyxy -> the context windows ``Tensor[N, 4]`` xyxy: each box scaled about its centre by
    ``size / (size - 2 * padding)`` per axis (``padding=0``: the boxes themselves)."""
    if not 0 <= 2 * padding < size:
        raise ValueError(f"padding must satisfy 0 <= 2*padding < size, got padding={padding}, size={size}")
    boxes = boxes.float()
    scale = size / (size - 2 * padding)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat([centre - half, centre + half], 1)


def warp_crops(image: Tensor, boxes: Tensor, *, size: int = 224, padding: int = 16) -> Tensor:
    """Context-padded, warped crops of one image.

    Args:
        image: ``Tensor[3, H, W]`` float, normalised so that the mean colour is 0 (a backbone's ``normalize``).
        boxes: ``Tensor[N, 4]`` xyxy pixels of ``image``.
    Returns:
        ``Tensor[N, 3, size, size]`` in ``image``'s dtype and device.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4], got shape {tuple(boxes.shape)}")
    if boxes.shape[0] == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    win = context_boxes(boxes, size=size, padding=padding).to(image.device, image.dtype) + 1.0  # the 1 px pad
    padded = F.pad(image, (1, 1, 1, 1))[None]
    rois = torch.cat([win.new_zeros((win.shape[0], 1)), win], 1)
    return roi_align(padded, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def warp_crops_reference(image: Tensor, boxes: Tensor, *, size: int = 224, padding: int = 16) -> Tensor:
    """Slow reference of :func:`warp_crops`: one crop at a time, explicit bilinear interpolation, 0 outside.

    Output pixel ``(i, j)`` of a window ``(x1, y1, x2, y2)`` samples the continuous image point
    ``x = x1 + (j + 0.5) (x2 - x1) / size``, ``y = y1 + (i + 0.5) (y2 - y1) / size``; pixel ``(r, c)`` of the
    image has its centre at ``(c + 0.5, r + 0.5)``.
    """
    img = image.double()
    C, H, W = img.shape
    out = []
    for x1, y1, x2, y2 in context_boxes(boxes, size=size, padding=padding).double().tolist():
        xs = x1 + (torch.arange(size, dtype=torch.float64) + 0.5) * (x2 - x1) / size - 0.5
        ys = y1 + (torch.arange(size, dtype=torch.float64) + 0.5) * (y2 - y1) / size - 0.5
        crop = torch.zeros(C, size, size, dtype=torch.float64)
        for i, y in enumerate(ys.tolist()):
            r0 = int(torch.floor(torch.tensor(y)))
            fy = y - r0
            for j, x in enumerate(xs.tolist()):
                c0 = int(torch.floor(torch.tensor(x)))
                fx = x - c0
                acc = torch.zeros(C, dtype=torch.float64)
                for dr, wy in ((0, 1 - fy), (1, fy)):
                    for dc, wx in ((0, 1 - fx), (1, fx)):
                        r, c = r0 + dr, c0 + dc
                        if 0 <= r < H and 0 <= c < W:
                            acc += wy * wx * img[:, r, c]
                crop[:, i, j] = acc
        out.append(crop)
    return torch.stack(out).to(image.dtype) if out else image.new_zeros((0, C, size, size))
