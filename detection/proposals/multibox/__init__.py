"""MultiBox (Erhan et al. 2014): class-agnostic boxes as offsets from k-means priors, Hungarian-matched training."""
from detection.proposals.multibox.loss import match, multibox_loss
from detection.proposals.multibox.model import MultiBox, MultiBoxHead, load_multibox, save_multibox
from detection.proposals.multibox.priors import kmeans_priors

__all__ = ["kmeans_priors", "MultiBoxHead", "MultiBox", "save_multibox", "load_multibox", "match", "multibox_loss",
           "default_model_path"]


def default_model_path():
    """Where the embedded default MultiBox model ships inside the package."""
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "models" / "weights" / "multibox_lite0.pt"
