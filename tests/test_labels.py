import pytest

from detection.labels import coco80_map, det200, identity_map, voc20_map


def test_det200_order_and_lookups():
    s = det200()
    assert len(s) == 201 and s.num_classes == 200
    assert s.wnid(0) == "background"
    assert (s.wnid(1), s.name(1)) == ("n02672831", "accordion")  # DET ID 1
    assert s.name(200) == "zebra"
    i = s.index_of_wnid("n02121808")
    assert s.name(i) == "domestic cat" and s.index_of_name("Domestic Cat") == i
    assert s.index("n02121808") == s.index("domestic cat") == s.index(str(i)) == s.index(i) == i
    with pytest.raises(KeyError, match="unknown wnid"):
        s.index_of_wnid("n00000000")
    with pytest.raises(KeyError):
        s.index(201)


def test_det200_matches_shared_synsets(shared_data):
    lines = (shared_data / "det200_synsets.txt").read_text().split("\n")
    pairs = [ln.split(" ", 1) for ln in lines if ln.strip()]
    s = det200()
    assert [(s.wnid(i), s.name(i)) for i in range(1, 201)] == [tuple(p) for p in pairs]


def test_class_maps():
    s = det200()
    voc, coco = voc20_map(), coco80_map()
    assert len(voc.to_det) == 20 and len(coco.to_det) == 80
    assert voc.lookup("bottle") is None  # no unambiguous DET synset: unlabeled background
    assert s.name(voc.lookup("cat")) == "domestic cat"
    assert s.name(voc.lookup("diningtable")) == "table"
    assert coco.index_to_name[15] == "cat" and s.name(coco.lookup("cat")) == "domestic cat"
    assert coco.lookup("truck") is None
    assert sum(v is None for v in coco.to_det.values()) == 36
    with pytest.raises(KeyError):
        voc.lookup("unicorn")
    ident = identity_map()
    assert ident.lookup("apple") == s.index_of_name("apple") == ident.lookup("n07739125")
