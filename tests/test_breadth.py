"""Breadth sources: the WordNet map, the Tiny ImageNet reader, positives-only sources in training, composites that
share per-source caches, and the upscale limit -- on hand-made inputs with known answers."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data import (DetectionDataset, ImageRecord, concat_datasets, read_tiny_imagenet, sample_dataset,
                            set_exhaustive)
from detection.data.wordnet import derive_det_map, read_data_noun
from detection.labels import det200, imagenet_map

DOG, CAT, TABLE = "n02084071", "n02121808", "n04379243"

# data.noun lines: offset lex_filenum n w_cnt(hex) word lex_id ... p_cnt ptr(sym offset pos st)... | gloss
_NOUN = """\
  1 This is a made-up excerpt in WordNet 3.0's data.noun format
00000001 03 n 01 entity 0 000 | the root
02083346 05 n 01 canine 0 001 @ 00000001 n 0000 | dogs and kin
02084071 05 n 01 dog 0 001 @ 02083346 n 0000 | a dog (DET)
02087122 05 n 01 hunting_dog 0 001 @ 02084071 n 0000 | hunting dogs
02099601 05 n 02 golden_retriever 0 gold_dog 0 001 @ 02087122 n 0000 | three steps below dog
02121808 05 n 01 domestic_cat 0 001 @ 00000001 n 0000 | a cat (DET)
09999999 05 n 01 dogcat 0 002 @ 02084071 n 0000 @ 02121808 n 0000 | two DET ancestors
04067472 06 n 01 reel 0 001 @ 00000001 n 0000 | no DET ancestor
"""


def test_wordnet_map_follows_hypernyms_and_refuses_to_guess(tmp_path):
    f = tmp_path / "data.noun"
    f.write_bytes(_NOUN.replace("\n", "\r\n").encode())  # the distributed file has CRLF line ends
    nouns = read_data_noun(f)
    assert nouns.lemmas["n02099601"] == ("golden retriever", "gold dog")
    assert nouns.ancestors("n02099601") == {"n02099601": 0, "n02087122": 1, DOG: 2, "n02083346": 3, "n00000001": 4}
    rows = {r.wnid: r for r in derive_det_map(nouns, ["n02099601", DOG, "n09999999", "n04067472", "n01234567"],
                                               [DOG, CAT])}
    assert (rows["n02099601"].det_wnid, rows["n02099601"].steps) == (DOG, 2)
    assert (rows[DOG].det_wnid, rows[DOG].steps) == (DOG, 0)
    assert rows["n09999999"].det_wnid == "" and rows["n09999999"].note.startswith("ambiguous")
    assert rows["n04067472"].note == "unmapped" and rows["n01234567"].note == "not in WordNet"
    bad = tmp_path / "bad.noun"
    bad.write_text("00000001 03 v 01 run 0 000 | a verb\n")
    with pytest.raises(ValueError, match="bad.noun:1"):
        read_data_noun(bad)


def test_class_map_files(tmp_path):
    from detection.data.scan import resolve_class_map

    space = det200()
    aq = resolve_class_map("aquarium7")  # shipped as detection/resources/aquarium7_to_det200.tsv
    assert aq.lookup("stingray") == space.index_of_name("ray") and aq.lookup("puffin") == space.index_of_name("bird")
    assert aq.lookup("fish") is None
    assert resolve_class_map("fruitveg22").lookup("cabbage") == space.index_of_name("head cabbage")
    own = tmp_path / "mine.tsv"
    own.write_text(f"# name\twnid\nPuppy\t{DOG}\nrock\t-\n")
    m = resolve_class_map(str(own))
    assert m.lookup("puppy") == space.index_of_wnid(DOG) and m.lookup("rock") is None
    with pytest.raises(KeyError):
        m.lookup("kitten")
    own.write_text("puppy\tn99999999\n")
    with pytest.raises(ValueError, match="mine.tsv"):
        resolve_class_map(str(own))
    with pytest.raises(ValueError, match="aquarium7"):  # the message lists what there is
        resolve_class_map("aquarium")


def test_shipped_imagenet_map():
    m, space = imagenet_map(), det200()
    assert len(m.to_det) == 1000
    assert m.lookup("n02099601") == space.index_of_wnid(DOG)  # golden retriever
    assert m.lookup("n02123045") == space.index_of_wnid(CAT)  # tabby
    assert m.lookup("n03179701") == space.index_of_wnid(TABLE)  # desk
    assert m.lookup("n03201208") is None  # dining table: "table (with a meal laid out)", not furniture
    assert m.lookup("n04067472") is None  # reel
    mapped = [v for v in m.to_det.values() if v is not None]
    assert len(mapped) == 483 and len(set(mapped)) == 200


def _jpeg(path: Path, seed: int, grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (64, 64) if grey else (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)


@pytest.fixture
def tiny(tmp_path):
    """golden retriever (5 photos, one grey, one box reaching the last pixel), tabby (2, one byte-identical to a
    retriever photo), reel (unmapped), gorilla-like class without boxes; val with a placeholder class."""
    root = tmp_path / "tiny"
    gold, tabby, reel, nobox = "n02099601", "n02123045", "n04067472", "n02480855"
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join([gold, tabby, reel, nobox]))
    lines = []
    for k in range(5):
        _jpeg(root / "train" / gold / "images" / f"{gold}_{k}.JPEG", k, grey=(k == 1))
        lines.append(f"{gold}_{k}.JPEG\t{k}\t2\t63\t40")
    (root / "train" / gold / f"{gold}_boxes.txt").write_text("\n".join(lines))
    _jpeg(root / "train" / tabby / "images" / f"{tabby}_0.JPEG", 100)
    (root / "train" / tabby / "images" / f"{tabby}_1.JPEG").write_bytes(
        (root / "train" / gold / "images" / f"{gold}_4.JPEG").read_bytes())
    (root / "train" / tabby / f"{tabby}_boxes.txt").write_text(f"{tabby}_0.JPEG\t0\t0\t63\t63\n{tabby}_1.JPEG\t1\t1\t9\t9\n")
    _jpeg(root / "train" / reel / "images" / f"{reel}_0.JPEG", 200)
    (root / "train" / reel / f"{reel}_boxes.txt").write_text(f"{reel}_0.JPEG\t0\t0\t10\t10\n")
    for k in range(3):
        _jpeg(root / "train" / nobox / "images" / f"{nobox}_{k}.JPEG", 300 + k)
    val = []
    for k in range(6):
        _jpeg(root / "val" / "images" / f"val_{k}.JPEG", 400 + k)
        val.append(f"val_{k}.JPEG\t{nobox}\t17\t33\t28\t39")  # the same small box on every photo: a placeholder
    _jpeg(root / "val" / "images" / "val_6.JPEG", 500)
    val.append(f"val_6.JPEG\t{gold}\t0\t0\t31\t31")
    (root / "val" / "val_annotations.txt").write_text("\n".join(val))
    return root


def test_tiny_imagenet_reader(tiny):
    space = det200()
    ds = read_tiny_imagenet(tiny, split="train", progress=False)
    c = ds.report.counts
    assert c["unmapped_synset"] == 1 and c["no_boxes"] == 3 and c["conflicting_duplicate"] == 2
    # golden retriever 4 (its 5th photo is also filed as a tabby: both copies dropped), tabby 1
    assert len(ds) == 5 and all(not r.exhaustive for r in ds.records)
    by_id = {r.image_id: r for r in ds.records}
    r0 = by_id["train/n02099601/n02099601_0"]
    assert r0.labels.tolist() == [space.index_of_wnid(DOG)]
    assert r0.boxes.tolist() == [[0.0, 2.0, 64.0, 41.0]]  # inclusive pixel indices -> exclusive, clipped to 64
    assert by_id["train/n02123045/n02123045_0"].boxes.tolist() == [[0.0, 0.0, 64.0, 64.0]]
    from detection.data import read_image_rgb

    assert read_image_rgb(by_id["train/n02099601/n02099601_1"].path).shape == (64, 64, 3)  # grey -> RGB
    assert "positives only" in ds.summary()
    # per_class: a fixed, seeded choice per class
    a = read_tiny_imagenet(tiny, split="train", per_class=2, seed=1, progress=False)
    b = read_tiny_imagenet(tiny, split="train", per_class=2, seed=1, progress=False)
    assert [r.image_id for r in a.records] == [r.image_id for r in b.records]
    assert sum(r.image_id.startswith("train/n02099601") for r in a.records) <= 2
    for seed in range(6):  # duplicates are found before the choice: one copy alone is never kept
        ids = {r.image_id for r in read_tiny_imagenet(tiny, per_class=1, seed=seed, progress=False).records}
        assert not ids & {"train/n02099601/n02099601_4", "train/n02123045/n02123045_1"}
    # skip_per_class: the next photos of the same seeded order, never those per_class took (a dev split)
    first = {r.image_id for r in read_tiny_imagenet(tiny, per_class=2, seed=1, progress=False).records}
    after = {r.image_id for r in read_tiny_imagenet(tiny, per_class=2, seed=1, skip_per_class=2,
                                                    progress=False).records}
    both = {r.image_id for r in read_tiny_imagenet(tiny, per_class=4, seed=1, progress=False).records}
    assert after and not first & after and first | after == both
    rest = {r.image_id for r in read_tiny_imagenet(tiny, seed=1, skip_per_class=2, progress=False).records}
    assert rest == {r.image_id for r in ds.records} - first
    with pytest.raises(ValueError, match="skip_per_class"):
        read_tiny_imagenet(tiny, skip_per_class=-1, progress=False)
    v = read_tiny_imagenet(tiny, split="val", progress=False)
    assert v.report.counts["placeholder_boxes"] == 6 and [r.image_id for r in v.records] == ["val/val_6"]
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        read_tiny_imagenet(tiny / "nowhere", progress=False)


def _rec(path, name, label=1, exhaustive=True):
    return ImageRecord(path, 64, 64, torch.tensor([[0.0, 0, 32, 32]]), torch.tensor([label]), torch.tensor([False]),
                       name, exhaustive)


def test_concat_dedupes_excludes_and_keeps_sources(tmp_path):
    for k in range(4):
        _jpeg(tmp_path / f"{k}.jpg", k)
    (tmp_path / "copy_of_1.jpg").write_bytes((tmp_path / "1.jpg").read_bytes())
    a = DetectionDataset("a", [_rec(tmp_path / "0.jpg", "0"), _rec(tmp_path / "1.jpg", "1")])
    b = DetectionDataset("b", [_rec(tmp_path / "copy_of_1.jpg", "c1"), _rec(tmp_path / "2.jpg", "2"),
                               _rec(tmp_path / "3.jpg", "3")], blacklist={(2, 5)})
    held = DetectionDataset("held", [_rec(tmp_path / "2.jpg", "x")])
    inner = concat_datasets(a, name="inner")
    out = concat_datasets(inner, set_exhaustive(b, False), name="outer", dedupe=True, exclude=held)
    assert [r.image_id for r in out.records] == ["inner/a/0", "inner/a/1", "b/3"]
    assert out.report.counts["duplicate_image"] == 1 and out.report.counts["held_out_image"] == 1
    assert out.blacklist == {(2, 5)}  # b's image 2 is now position 2
    # caches are keyed by the leaf source, whatever the nesting
    assert [(r.source, r.source_id) for r in out.records] == [("a", "0"), ("a", "1"), ("b", "3")]
    assert [r.exhaustive for r in out.records] == [True, True, False]


def test_dataset_cache_is_shared_by_composites_and_adopts_old_entries(tmp_path):
    from detection.proposals.cache import DatasetCache, ProposalCache

    _jpeg(tmp_path / "0.jpg", 0)
    _jpeg(tmp_path / "1.jpg", 1)
    part = DetectionDataset("voc", [_rec(tmp_path / "0.jpg", "0"), _rec(tmp_path / "1.jpg", "1")])
    train = concat_datasets(part, name="train")
    bigger = concat_datasets(part, DetectionDataset("extra", []), name="breadth")
    root = tmp_path / "cache"
    DatasetCache(root, train, "m", {"k": 1}).save(train.records[0], {"boxes": torch.ones(1, 4)})
    got = DatasetCache(root, bigger, "m", {"k": 1}).load(bigger.records[0])
    assert got is not None and got["boxes"].sum() == 4
    assert (root / "voc").is_dir() and not (root / "train").exists()
    # an entry written under the composite's name (the layout before per-source caches) is found and linked
    old = ProposalCache(root, "train", "m", {"k": 1})
    old.prepare()
    old.save("voc/1", {"boxes": torch.zeros(2, 4)})
    dc = DatasetCache(root, train, "m", {"k": 1})
    assert dc.load(train.records[1])["boxes"].shape == (2, 4)
    assert ProposalCache(root, "voc", "m", {"k": 1}).load("1") is not None


def test_extraction_of_a_composite_writes_per_source(tmp_path):
    from detection.proposals.cache import ProposalCache
    from detection.proposals.extract import extract_split

    class Boxes:
        method, settings = "fake", {"n": 3}

        def __call__(self, image):
            return torch.tensor([[0.0, 0, 10, 10]] * 3), None

    _jpeg(tmp_path / "0.jpg", 0)
    _jpeg(tmp_path / "1.jpg", 1)
    comp = concat_datasets(DetectionDataset("p", [_rec(tmp_path / "0.jpg", "0")]),
                           DetectionDataset("q", [_rec(tmp_path / "1.jpg", "1")]), name="comp")
    st = extract_split(comp, Boxes(), cache_root=tmp_path / "c", progress=False)
    assert st.computed == 2
    assert ProposalCache(tmp_path / "c", "p", "fake", {"n": 3}).load("0")["boxes"].shape == (3, 4)
    assert ProposalCache(tmp_path / "c", "q", "fake", {"n": 3}).load("1") is not None
    again = extract_split(concat_datasets(DetectionDataset("q", [_rec(tmp_path / "1.jpg", "1")]), name="other"),
                          Boxes(), cache_root=tmp_path / "c", progress=False)
    assert again.computed == 0 and again.cached == 1


def test_positives_only_images_give_no_background_and_the_batch_keeps_one_to_three():
    from detection.training.sampler import LabelledImage, batch_draws, epoch_order, label_proposals

    gt = torch.tensor([[0.0, 0, 50, 50]])
    props = torch.tensor([[0.0, 0, 48, 50], [0, 0, 10, 10], [60, 60, 90, 90], [2, 2, 50, 49], [0, 0, 20, 50]])
    b, lab, iou = label_proposals(props, gt, torch.tensor([7]), exhaustive=True)
    assert lab.tolist() == [7, 7, 0, 0, 7, 0]
    b2, lab2, iou2 = label_proposals(props, gt, torch.tensor([7]), exhaustive=False)
    assert lab2.tolist() == [7, 7, 7] and torch.equal(b2, b[lab > 0])

    def item(n_fg, n_bg, exhaustive):
        labels = torch.cat([torch.full((n_fg,), 3), torch.zeros(n_bg, dtype=torch.long)])
        return LabelledImage(labels=labels, max_iou=torch.cat([torch.ones(n_fg), torch.rand(n_bg) * 0.4]),
                             exhaustive=exhaustive)

    gen = torch.Generator().manual_seed(0)
    full, part = item(40, 500, True), item(40, 0, False)
    draws = batch_draws([full, part], members=2, per_image=64, fg=16, gen=gen)
    for m in range(2):
        n_bg = [int((it.labels[pool[picks[m]]] == 0).sum()) for it, (pool, picks) in zip([full, part], draws)]
        n_fg = [int((it.labels[pool[picks[m]]] > 0).sum()) for it, (pool, picks) in zip([full, part], draws)]
        assert n_bg == [96, 0] and n_fg == [16, 16]  # 32 : 96, the batch's 1:3
    same = batch_draws([full, full], members=1, per_image=64, fg=16, gen=torch.Generator().manual_seed(0))
    assert [len(p[1][0]) for p in same] == [64, 64]
    items = [item(1, 0, k % 4 != 0) for k in range(40)]  # 10 positives-only among 40
    order = epoch_order(items, torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(40))
    pairs = [order[i:i + 2] for i in range(0, 40, 2)]
    assert max(sum(not items[j].exhaustive for j in p) for p in pairs) == 1  # never two in one batch
    plain = [item(1, 0, True)] * 10
    assert epoch_order(plain, torch.Generator().manual_seed(3)) == \
        torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()


def test_max_upscale_caps_only_small_images():
    from detection.models.region import RegionConfig, RegionEnsemble

    class _Stub(torch.nn.Module):  # image_scale needs no network
        pass

    m = RegionEnsemble.__new__(RegionEnsemble)
    torch.nn.Module.__init__(m)
    m.cfg = RegionConfig(image_size=600, max_image_size=1000, max_upscale=4)
    assert m.image_scale(64, 64) == 4.0
    assert m.image_scale(500, 375) == pytest.approx(1.6)
    m.cfg = RegionConfig(image_size=600, max_image_size=1000)
    assert m.image_scale(64, 64) == pytest.approx(600 / 64)


def _compose(tool, overrides):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "experiments"))
    from detection import config as hs
    from hydra import compose, initialize_config_dir

    hs.register_schemas()
    with initialize_config_dir(config_dir=hs.CONFIG_DIR, version_base="1.3"):
        cfg = compose(tool, overrides=overrides)
    return hs, cfg


def test_breadth_presets_need_extra_root_and_read_it(tiny, monkeypatch):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    monkeypatch.delenv("DET_EXTRA_ROOT", raising=False)
    hs, cfg = _compose("eval_map", ["dataset=breadth_tiny_val"])
    with pytest.raises(SystemExit, match="extra_root"):
        hs.resolve_data_root(cfg)
    hs, cfg = _compose("eval_map", ["dataset=breadth_tiny_val", f"extra_root={tiny.parent / 'nowhere'}"])
    with pytest.raises(SystemExit, match="not a folder"):
        hs.resolve_data_root(cfg)
    (tiny.parent / "IMagenet").mkdir()
    tiny.rename(tiny.parent / "IMagenet" / "tiny-imagenet-200")
    hs, cfg = _compose("train_classifier", ["dataset=tiny_imagenet", f"extra_root={tiny.parent}"])
    hs.resolve_data_root(cfg)
    ds = instantiate(cfg.dataset, _convert_="all", progress=False)
    assert ds.name == "tiny_imagenet_train" and len(ds) == 5 and not ds[0].exhaustive
    # the held-out COCO photos that breadth_train and breadth_tune exclude are breadth_coco_val's
    _, b = _compose("eval_map", ["dataset=breadth_coco_val", "extra_root=/x"])
    for preset in ("breadth_train", "breadth_tune"):
        _, a = _compose("train_classifier", [f"dataset={preset}", "extra_root=/x"])
        ex = OmegaConf.to_container(a.dataset.exclude, resolve=True)
        assert ex == OmegaConf.to_container(b.dataset, resolve=True)
    # breadth_tune is breadth_train with a seeded sample of voc07/train in place of all of it
    _, t = _compose("train_classifier", ["dataset=breadth_tune", "extra_root=/x"])
    _, f = _compose("train_classifier", ["dataset=breadth_train", "extra_root=/x"])
    tune, full = (OmegaConf.to_container(c.dataset, resolve=True)["_args_"] for c in (t, f))
    assert tune[0]["_target_"] == "detection.data.sample_dataset" and tune[0]["dataset"] == full[0]
    assert tune[1:] == full[1:]


def test_breadth_tune_samples_voc07_train(shared_data):
    from hydra.utils import instantiate

    _, cfg = _compose("train_classifier", ["dataset=breadth_tune", "extra_root=/x", f"data_root={shared_data}"])
    part = instantiate(cfg.dataset["_args_"][0], _convert_="all")
    full = instantiate(cfg.dataset["_args_"][0]["dataset"], _convert_="all", progress=False)
    ids = [r.image_id for r in part.records]
    assert part.name == full.name == "voc07_train" and len(ids) == 1000 < len(full)
    assert set(ids) <= {r.image_id for r in full.records}  # the same ids: train's cached entries serve it


def test_jittered_positives_overlap_their_object_and_repeat_by_seed():
    from torchvision.ops import box_iou

    from detection.training.sampler import jittered_positives

    gt = torch.tensor([[0.0, 0, 64, 64], [10, 5, 40, 60]])
    b = jittered_positives(gt, width=64, height=64, n=32, seed="a")
    assert b.shape == (64, 4)
    iou = box_iou(b, gt).max(1).values
    assert bool((iou >= 0.5).all()) and float(iou.mean()) < 0.95  # varied, not copies of the object
    assert bool((b >= 0).all()) and bool((b <= 64).all())
    assert torch.equal(b, jittered_positives(gt, width=64, height=64, n=32, seed="a"))
    assert not torch.equal(b, jittered_positives(gt, width=64, height=64, n=32, seed="b"))
    assert jittered_positives(torch.zeros(0, 4), width=64, height=64).shape == (0, 4)


def test_dataset_stats_counts_classes_per_source(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "experiments"))
    from dataset_stats import split_stats

    a = DetectionDataset("a", [_rec(tmp_path / f"{k}.jpg", str(k), label=1) for k in range(3)])
    b = set_exhaustive(DetectionDataset("b", [_rec(tmp_path / f"b{k}.jpg", str(k), label=2 + k % 2)
                                              for k in range(4)]), False)
    st = split_stats(concat_datasets(a, b, name="ab"), min_boxes=2)
    names = det200().names
    assert st["images"] == 7 and st["positives_only"] == 4 and st["classes"] == 3
    assert st["enough"] == sorted([names[1], names[2], names[3]], key=str.lower)
    assert st["sources"]["a"] == {"images": 3, "boxes": 3, "positives_only": 0, "classes": 1, "classes_with_2_boxes": 1,
                                  "boxes_per_class": {names[1]: 3}}
    assert st["sources"]["b"]["boxes_per_class"] == {names[2]: 2, names[3]: 2}
    assert st["sources"]["b"]["positives_only"] == 4 and st["sources"]["b"]["classes_with_2_boxes"] == 2
    assert split_stats(a, min_boxes=4)["classes_with_4_boxes"] == 0
    # what a model trained on it has seen per class (the ImageNet prior's trust): [exhaustive, positives only]
    space = det200()
    assert concat_datasets(a, b, name="ab").class_boxes() == {space.wnid(1): [3, 0], space.wnid(2): [0, 2],
                                                              space.wnid(3): [0, 2]}


def test_sample_dataset_is_seeded_ordered_and_keeps_ids(tmp_path):
    recs = [_rec(tmp_path / f"{k}.jpg", str(k)) for k in range(10)]
    ds = DetectionDataset("d", recs, blacklist={(k, 5) for k in range(10)})
    s = sample_dataset(ds, count=4, seed=1)
    ids = [r.image_id for r in s.records]
    assert len(ids) == 4 and ids == sorted(ids, key=int) and s.name == "d"  # original order, same ids and name
    assert s.blacklist == {(k, 5) for k in range(4)}  # renumbered with the records
    assert ids == [r.image_id for r in sample_dataset(ds, count=4, seed=1).records]
    assert ids != [r.image_id for r in sample_dataset(ds, count=4, seed=2).records]
    assert sample_dataset(ds, count=10) is ds and sample_dataset(ds, count=99) is ds
    with pytest.raises(ValueError, match="count must be >= 1"):
        sample_dataset(ds, count=0)


def test_subset_keeps_blacklist_and_image_numbers(tmp_path):
    recs = [_rec(tmp_path / f"{k}.jpg", str(k), exhaustive=k != 1) for k in range(4)]
    ds = DetectionDataset("d", recs, blacklist={(1, 5), (3, 7)}, image_indices=[10, 11, 12, 13])
    s = ds.subset([3, 0])
    assert [r.image_id for r in s.records] == ["3", "0"] and s.image_indices == [13, 10] and s.blacklist == {(0, 7)}
    assert ds.subset(range(4)) is ds
    e = ds.exhaustive_only()
    assert [r.image_id for r in e.records] == ["0", "2", "3"] and e.blacklist == {(2, 7)}
