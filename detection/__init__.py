"""GoogLeNet's ILSVRC 2014 detection pipeline.  ``from detection import load_detector`` (see :mod:`detection.api`)."""

__all__ = ["load_detector", "ObjectDetector", "ImageDetections"]


def __getattr__(name):  # lazy: `import detection.boxes` does not load the models
    if name in __all__:
        from detection import api

        return getattr(api, name)
    raise AttributeError(f"module 'detection' has no attribute {name!r}")
