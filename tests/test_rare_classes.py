"""Rare classes in fine-tuning (issue 15): repeat-factor sampling of images and class-balanced positives."""
import math

import pytest
import torch

from detection.training.sampler import (LabelledImage, batch_draws, epoch_order, member_draws, repeat_factors,
                                        repeated)
from detection.training.roi import pick_positives, pool_indices


def _item(classes, exhaustive=True, n_per_class=5):
    labels = torch.tensor([c for c in classes for _ in range(n_per_class)] + [0] * 20, dtype=torch.long)
    return LabelledImage(labels=labels, max_iou=torch.where(labels > 0, 0.8, 0.2), exhaustive=exhaustive)


def test_repeat_factors_follow_lvis_and_spare_positives_only_images():
    # 10 images: class 1 in all of them, class 2 in one exhaustive image and one positives-only image
    items = [_item([1]) for _ in range(8)] + [_item([1, 2]), _item([2], exhaustive=False)]
    f = repeat_factors(items, thresh=0.5)
    r2 = math.sqrt(0.5 / (2 / 10))  # class 2 is in 2 of 10 images
    assert f[:8] == [1.0] * 8  # class 1 is in every image: sqrt(0.5 / 1) < 1 -> 1
    assert f[8] == pytest.approx(r2)  # an image takes its rarest class's factor
    assert f[9] == 1.0  # positives only: never repeated
    assert repeat_factors(items, thresh=0.0) == [1.0] * 10
    assert repeat_factors(items, thresh=0.01) == [1.0] * 10  # every class frequent enough at this threshold
    assert repeat_factors([_item([])], thresh=1.0) == [1.0]  # no positives: nothing to repeat for


def test_repeated_rounds_stochastically_to_the_factor_on_average():
    factors = [1.0, 2.0, 2.25, 3.7]
    counts = torch.zeros(4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        ep = repeated(factors, gen)
        c = torch.bincount(torch.tensor(ep), minlength=4).float()
        assert c[0] == 1 and c[1] == 2 and c[2] in (2, 3) and c[3] in (3, 4)
        counts += c
    torch.testing.assert_close(counts / 2000, torch.tensor(factors), atol=0.05, rtol=0)


def test_epoch_order_with_factors_repeats_rare_images_and_still_spreads_positives_only_ones():
    items = [_item([], exhaustive=k % 4 != 0) for k in range(40)]  # 10 positives-only among 40
    factors = [3.0 if k == 1 else 1.0 for k in range(40)]  # image 1 (exhaustive) shown 3 times
    order = epoch_order(items, torch.Generator().manual_seed(1), factors)
    assert len(order) == 42 and order.count(1) == 3 and sorted(set(order)) == list(range(40))
    pairs = [order[i:i + 2] for i in range(0, 42, 2)]
    assert max(sum(not items[j].exhaustive for j in p) for p in pairs) == 1
    # all factors 1: exactly the order without factors (an old run's draws are kept)
    g = torch.Generator().manual_seed(5)
    assert epoch_order(items, g, [1.0] * 40) == epoch_order(items, torch.Generator().manual_seed(5))


def test_balanced_positives_give_a_rare_class_its_share():
    labels = torch.tensor([1] * 100 + [2] * 4 + [0] * 50)  # a person's 100 positives, a mouse's 4
    idx = torch.nonzero(labels > 0).flatten()
    gen = torch.Generator().manual_seed(0)
    n_bal = [int((labels[pick_positives(labels, idx, 8, gen, balance=True)] == 2).sum()) for _ in range(300)]
    n_uni = [int((labels[pick_positives(labels, idx, 8, gen)] == 2).sum()) for _ in range(300)]
    assert n_bal == [4] * 300  # half of 8: all 4 of them
    assert sum(n_uni) / 300 < 0.6  # 8 * 4 / 104 = 0.31 uniformly
    pick = pick_positives(labels, idx, 8, gen, balance=True)
    assert len(set(pick.tolist())) == 8 and bool((labels[pick] > 0).all())  # without replacement, positives only
    # fewer positives than asked: all of them, either way; one class: the same draw as uniform
    assert sorted(pick_positives(labels, idx[100:], 8, gen, balance=True).tolist()) == idx[100:].tolist()
    one = torch.tensor([3] * 30)
    a = pick_positives(one, torch.arange(30), 5, torch.Generator().manual_seed(2), balance=True)
    b = pick_positives(one, torch.arange(30), 5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_balanced_draws_reach_pool_and_members_and_keep_the_batch_ratio():
    labels = torch.tensor([1] * 200 + [2] * 6 + [0] * 300)
    max_iou = torch.cat([torch.full((206,), 0.8), torch.linspace(0, 0.49, 300)])
    pool = pool_indices(labels, max_iou, fg=32, bg=96, gen=torch.Generator().manual_seed(0), balance=True)
    assert int((labels[pool] == 2).sum()) == 6 and int((labels[pool] > 0).sum()) == 32
    pool, picks = member_draws(labels, max_iou, members=2, fg=16, bg=48, gen=torch.Generator().manual_seed(0),
                               balance=True)
    for p in picks:
        lab = labels[pool[p]]
        assert int((lab > 0).sum()) == 16 and int((lab == 0).sum()) == 48
        assert int((lab == 2).sum()) >= 4  # ~ half of 16 but only 6 exist; uniformly ~0.5
    item = LabelledImage(labels=labels, max_iou=max_iou)
    draws = batch_draws([item, item], members=1, per_image=64, fg=16, gen=torch.Generator().manual_seed(1),
                        balance=True)
    assert [len(d[1][0]) for d in draws] == [64, 64]
