"""The network fine-tuning trains: the trunk's trainable stages, RoIAlign and every member's head."""
from __future__ import annotations

from torch import Tensor, nn

from detection.models.region import RegionEnsemble, flat_regions, pool_regions, split_stem

__all__ = ["FineTuneNet"]


class FineTuneNet(nn.Module):
    """The trainable stages (BatchNorm frozen) and the members' heads; ``forward`` maps one image's cached frozen
    map and each member's RoIs to each member's logits."""

    def __init__(self, model: RegionEnsemble):
        super().__init__()
        from timm.layers import freeze_batch_norm_2d

        _, trainable, self.names = split_stem(model.backbones[0], model.cfg.trainable_stages)
        import copy

        self.stages = freeze_batch_norm_2d(copy.deepcopy(trainable))
        self.heads = copy.deepcopy(model.heads)
        self.grids = model.cfg.grids  # (enlargement, grid) of each region a RoI is pooled as

    def forward(self, fmap: Tensor, rois: Tensor, picks: list[Tensor]) -> list[Tensor]:
        """``fmap [1, C, h, w]`` (the frozen part's output), ``rois [R, 5]`` (pooled once: RoIAlign's backward is
        the costly part on a CPU), ``picks[m]``: member m's rows of ``rois`` -> ``[len(picks[m]), classes]`` each."""
        pooled = flat_regions(pool_regions(self.stages(fmap), rois, self.grids))
        return [head(pooled[p]) for head, p in zip(self.heads, picks)]

    def trunk_state(self) -> dict[str, Tensor]:
        """The fine-tuned stages' weights with the backbone's key names (``blocks.6.…``)."""
        out = {}
        for k, v in self.stages.state_dict().items():
            layer, rest = k.split(".", 1)
            out[f"{layer.replace('_', '.', 1)}.{rest}"] = v.detach().clone()
        return out
