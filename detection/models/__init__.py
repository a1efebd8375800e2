"""Networks: the shared ImageNet backbones (and, later, the region classifier and its ensemble)."""
from detection.models.backbones import Backbone, BackboneSpec, backbone_names, build_backbone

__all__ = ["Backbone", "BackboneSpec", "build_backbone", "backbone_names"]
