import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data import concat_datasets, read_coco, read_ilsvrc_det, read_voc, read_yolo
from detection.labels import det200, voc20_map

VOC_XML = """<annotation><filename>{fn}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>" \
      "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def write_image(path, w=64, h=48, fmt=None):
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path, format=fmt)


def write_xml(path, fn, objs, w=64, h=48):
    path.write_text(VOC_XML.format(fn=fn, w=w, h=h, objects="".join(
        OBJ.format(n=n, d=int(d), b=b) for n, b, d in objs)))


@pytest.fixture
def voc_tree(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    for i in range(4):
        write_image(tmp_path / "JPEGImages" / f"im{i}.jpg")
    a = tmp_path / "Annotations"
    # im0: good boxes, one difficult, one bottle (unmapped) -- size 0x0 in the XML
    write_xml(a / "im0.xml", "im0.jpg", [("cat", (1, 1, 10, 10), 0), ("dog", (5, 5, 64, 48), 1),
                                         ("bottle", (2, 2, 8, 8), 0)], w=0, h=0)
    # im1: inverted, outside, zero-area after clipping, reaching outside (clipped), unknown class
    write_xml(a / "im1.xml", "im1.jpg", [("cat", (20, 5, 10, 30), 0), ("cat", (100, 100, 120, 120), 0),
                                         ("cat", (10, 5, 9, 20), 0), ("person", (-5, 1, 70, 20), 0),
                                         ("unicorn", (1, 1, 5, 5), 0)])
    a.joinpath("im2.xml").write_text("<annotation><object><name>cat</name>")  # malformed XML
    write_xml(a / "im3.xml", "im3.jpg", [("cat", (1, 1, 10, 10), 0)], w=100, h=100)  # wrong size in the XML
    write_xml(a / "im4.xml", "im4.jpg", [("cat", (1, 1, 10, 10), 0)])  # image missing
    (tmp_path / "JPEGImages" / "im3.jpg").write_bytes(b"")  # 0-byte image
    write_image(tmp_path / "JPEGImages" / "im3b.jpg")
    return tmp_path


def test_voc_reader_counts_every_problem(voc_tree):
    ds = read_voc(voc_tree)
    s = det200()
    by_id = {r.image_id: r for r in ds}
    assert sorted(by_id) == ["im0", "im1"]
    r0 = by_id["im0"]
    assert (r0.width, r0.height) == (64, 48)  # real size, not the XML's 0x0
    assert r0.boxes.tolist() == [[0, 0, 10, 10], [4, 4, 64, 48]]  # inclusive 1-based -> continuous
    assert [s.name(i) for i in r0.labels.tolist()] == ["domestic cat", "dog"]
    assert r0.difficult.tolist() == [False, True]
    r1 = by_id["im1"]
    assert r1.boxes.tolist() == [[0, 0, 64, 20]]  # the person box, clipped
    rep = ds.report
    assert rep.counts["size_from_image"] == 1 and rep.counts["unmapped_class"] == 1
    assert rep.unmapped["bottle"] == 1
    for kind in ("box_inverted", "box_outside", "box_zero_area", "box_clipped", "unknown_class",
                 "bad_annotation", "unreadable_image", "missing_image"):
        assert rep.counts[kind] == 1, kind
    assert rep.images_skipped == 3 and rep.boxes_dropped == 4
    assert rep.counts["image_without_annotation"] == 1  # im3b.jpg: nobody annotated it
    text = ds.summary()
    assert "im2.xml: malformed XML" in text and "im3.jpg: empty file (0 bytes)" in text
    assert "unicorn" in rep.files["unknown_class"][0]


def test_voc_strict_unknown_class_names_the_file(voc_tree):
    with pytest.raises(ValueError, match=r"im1\.xml: unknown class name 'unicorn'"):
        read_voc(voc_tree, strict=True)


def test_voc_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation folder not found"):
        read_voc(tmp_path)


def test_yolo_reader(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "names.yaml").write_text("names:\n  0: person\n  1: truck\n  2: cat\n")
    write_image(tmp_path / "images" / "a.jpg", w=200, h=100)
    write_image(tmp_path / "images" / "b.png", w=50, h=50, fmt="PNG")
    write_image(tmp_path / "images" / "c.jpg", w=50, h=50)
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n1 0.1 0.1 0.1 0.1\n2 0.05 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "c.txt").write_text("0 0.5 oops 0.5\n")
    ds = read_yolo(tmp_path, class_map="coco80")
    by_id = {r.image_id: r for r in ds}
    assert sorted(by_id) == ["a", "b"]
    a = by_id["a"]
    assert a.boxes.tolist() == [[50, 25, 150, 75], [0, 40, 30, 60]]  # scaled by the real size; cat clipped
    assert [det200().name(i) for i in a.labels.tolist()] == ["person", "domestic cat"]
    assert len(by_id["b"]) == 0
    assert ds.report.counts["no_label_file"] == 1 and ds.report.unmapped["truck"] == 1
    assert ds.report.counts["box_clipped"] == 1 and ds.report.counts["bad_annotation"] == 1
    assert "c.txt:1" in ds.report.files["bad_annotation"][0]


def test_coco_reader_and_malformed_json(tmp_path):
    write_image(tmp_path / "x.jpg", w=80, h=60)
    data = {"images": [{"id": 7, "file_name": "x.jpg", "width": 80, "height": 60},
                       {"id": 8, "file_name": "gone.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 0, "name": "objects"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "bottle"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 20, 30], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [1, 1, 5, 5]},
                            {"id": 3, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = read_coco(tmp_path / "ann.json", class_map="voc20")
    assert len(ds) == 1 and ds[0].boxes.tolist() == [[10, 5, 30, 35]]
    assert ds.report.counts["missing_image"] == 1 and ds.report.counts["bad_annotation"] == 1
    assert ds.report.unmapped["bottle"] == 1
    (tmp_path / "bad.json").write_text('{"images": [1, 2,')
    with pytest.raises(ValueError, match=r"bad\.json: malformed JSON at line 1"):
        read_coco(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="not a COCO dataset"):
        read_coco(tmp_path / "list.json")


def test_ilsvrc_layout_from_real_photos(shared_data, tmp_path):
    """An ILSVRC DET tree built from real voc100 photos, XML names rewritten to wnids, with a blacklist."""
    src = sorted((shared_data / "voc100" / "Annotations").glob("*.xml"))[:6]
    root = tmp_path / "ILSVRC"
    (root / "Data/DET/val").mkdir(parents=True)
    (root / "Annotations/DET/val").mkdir(parents=True)
    (root / "ImageSets/DET").mkdir(parents=True)
    vmap, space = voc20_map(), det200()
    names, expected_boxes = [], 0
    for i, xml in enumerate(src):
        stem = f"ILSVRC2013_val_{i + 1:08d}"
        names.append(f"{stem} {i + 1}")
        shutil.copy(shared_data / "voc100" / "JPEGImages" / f"{xml.stem}.jpg", root / "Data/DET/val" / f"{stem}.JPEG")
        tree = ET.parse(xml)
        for obj in list(tree.getroot().findall("object")):
            det = vmap.lookup(obj.find("name").text)
            if det is None:
                tree.getroot().remove(obj)
                continue
            obj.find("name").text = space.wnid(det)
            expected_boxes += 1
        tree.write(root / "Annotations/DET/val" / f"{stem}.xml")
    (root / "ImageSets/DET/val.txt").write_text("\n".join(names) + "\n")
    first = read_voc(shared_data / "voc100", image_set=None).records[0]
    wnid = space.wnid(int(first.labels[0]))
    (root / "blacklist.txt").write_text(f"1 {wnid}\n")
    ds = read_ilsvrc_det(root, split="val", blacklist=root / "blacklist.txt")
    assert len(ds) == 6 and ds.num_boxes == expected_boxes
    assert ds.image_indices == [1, 2, 3, 4, 5, 6]
    assert ds.blacklist == {(0, int(first.labels[0]))}
    torch.testing.assert_close(ds[0].boxes, first.boxes)
    assert ds[0].labels.tolist() == first.labels.tolist()
    (root / "blacklist.txt").write_text("99 n02121808\n")
    with pytest.raises(ValueError, match=r"blacklist\.txt:1: image '99' is not in the image set"):
        read_ilsvrc_det(root, split="val", blacklist=root / "blacklist.txt")


def test_shared_splits_as_documented(shared_data):
    """The counts the data README states, read as the files are (quirks included)."""
    val = read_coco(shared_data / "voc07/val/_annotations.coco.json", class_map="voc20", name="val")
    assert (len(val), val.num_boxes, len(val.class_counts())) == (1004, 2958, 19)
    assert val.report.images_skipped == 0 and val.report.unmapped["bottle"] == 3072 - 2958
    voc100 = read_voc(shared_data / "voc100")
    assert len(voc100) == 100 and voc100.num_boxes + voc100.report.unmapped["bottle"] == 273
    assert int(sum(r.difficult.sum() for r in voc100)) <= 38
    fruit = read_voc(shared_data / "fruit", annotations=".", images=".", class_map="det200", name="fruit")
    assert (len(fruit), fruit.num_boxes) == (240, 465)
    assert fruit.report.counts["size_from_image"] > 0
    big = [r for r in fruit if max(r.width, r.height) > 2000]
    assert len(big) == 6
    coco = read_yolo(shared_data / "coco128")
    # two label files have no image (000000000656/659): their 12 boxes are reported, not silently lost
    assert len(coco.report.files["orphan_label_file"]) == 2
    orphan_boxes = sum(int(f.split("; ")[1].split()[0]) for f in coco.report.files["orphan_label_file"])
    assert coco.report.counts["orphan_label_file"] == orphan_boxes == 12
    assert len(coco) == 128 and coco.num_boxes + coco.report.counts["unmapped_class"] + orphan_boxes == 941
    train_small = concat_datasets(coco, fruit, name="train_small")
    assert len(train_small) == 368 and train_small.records[200].image_id.startswith("fruit/")
    assert train_small.report.counts["unmapped_class"] == coco.report.counts["unmapped_class"]
    for r in train_small:  # every box inside its image, positive area
        assert (r.boxes[:, 2] > r.boxes[:, 0]).all() and (r.boxes[:, 3] > r.boxes[:, 1]).all()
        assert (r.boxes[:, :2] >= 0).all() and (r.boxes[:, 2] <= r.width).all() and (r.boxes[:, 3] <= r.height).all()


def test_verify_images_drops_truncated_files(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (200, 300, 3), np.uint8)).save(
            tmp_path / "JPEGImages" / f"im{i}.jpg", quality=90)
        write_xml(tmp_path / "Annotations" / f"im{i}.xml", f"im{i}.jpg", [("cat", (1, 1, 10, 10), 0)], w=300, h=200)
    data = (tmp_path / "JPEGImages" / "im1.jpg").read_bytes()
    (tmp_path / "JPEGImages" / "im1.jpg").write_bytes(data[: len(data) // 3])
    ds = read_voc(tmp_path)
    assert len(ds) == 3  # the header is intact: a scan cannot tell
    ok = ds.verify_images(progress=False)
    assert [r.image_id for r in ok] == ["im0", "im2"] and ok.image_indices == [1, 3]
    assert ok.report.counts["unreadable_image"] == 1
    assert "im1.jpg: corrupt or truncated" in ok.report.files["unreadable_image"][0]
