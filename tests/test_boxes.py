import pytest
import torch

from detection.boxes import (as_boxes, box_inclusive_to_xyxy, box_xywh_to_xyxy, box_xyxy_to_inclusive,
                             box_xyxy_to_xywh, box_xyxy_to_yolo, box_yolo_to_xyxy)


def random_boxes(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 400
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], 1)


def test_known_values():
    b = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    assert box_xyxy_to_xywh(b).tolist() == [[10, 20, 100, 50]]
    assert box_xywh_to_xyxy([[10, 20, 100, 50]]).tolist() == [[10, 20, 110, 70]]
    # a VOC box on pixels 1..10 (inclusive, 1-based) covers continuous [0, 10): width 10
    assert box_inclusive_to_xyxy([[1, 1, 10, 10]]).tolist() == [[0, 0, 10, 10]]
    assert box_xyxy_to_inclusive([[0, 0, 10, 10]]).tolist() == [[1, 1, 10, 10]]
    # YOLO: centre (0.5, 0.5) size (0.5, 0.25) in a 200x100 image
    assert box_yolo_to_xyxy([[0.5, 0.5, 0.5, 0.25]], width=200, height=100).tolist() == [[50, 37.5, 150, 62.5]]


@pytest.mark.parametrize("fwd,back,kw", [
    (box_xyxy_to_xywh, box_xywh_to_xyxy, {}),
    (box_xyxy_to_inclusive, box_inclusive_to_xyxy, {}),
    (box_xyxy_to_yolo, box_yolo_to_xyxy, {"width": 640, "height": 480}),
])
def test_round_trips(fwd, back, kw):
    b = random_boxes()
    torch.testing.assert_close(back(fwd(b, **kw), **kw), b, rtol=0, atol=1e-4)
    torch.testing.assert_close(fwd(back(fwd(b, **kw), **kw), **kw), fwd(b, **kw), rtol=0, atol=1e-4)


def test_empty_and_shape_errors():
    for f in (box_xyxy_to_xywh, box_xywh_to_xyxy, box_inclusive_to_xyxy, box_xyxy_to_inclusive):
        assert f([]).shape == (0, 4)
    assert box_yolo_to_xyxy([], width=10, height=10).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        as_boxes([[1, 2, 3]])
    assert as_boxes([[1, 2, 3, 4]]).dtype == torch.float32


def test_inclusive_iou_equals_continuous_iou():
    """The devkit's +1 IoU on inclusive boxes equals torchvision's IoU on the converted boxes."""
    from torchvision.ops import box_iou

    a, b = random_boxes(30, 1).round(), random_boxes(30, 2).round()
    ia, ib = box_xyxy_to_inclusive(a), box_xyxy_to_inclusive(b)

    def devkit_iou(p, q):
        iw = torch.minimum(p[:, None, 2], q[None, :, 2]) - torch.maximum(p[:, None, 0], q[None, :, 0]) + 1
        ih = torch.minimum(p[:, None, 3], q[None, :, 3]) - torch.maximum(p[:, None, 1], q[None, :, 1]) + 1
        inter = iw.clamp(min=0) * ih.clamp(min=0)
        area = lambda r: (r[:, 2] - r[:, 0] + 1) * (r[:, 3] - r[:, 1] + 1)  # noqa: E731
        return inter / (area(p)[:, None] + area(q)[None, :] - inter)

    torch.testing.assert_close(devkit_iou(ia.double(), ib.double()), box_iou(a.double(), b.double()))
