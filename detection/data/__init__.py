"""Datasets: readers for ILSVRC DET, VOC XML, COCO JSON, YOLO txt and Tiny ImageNet into one record type in DET-200
labels."""
from detection.data.coco_yolo import read_coco, read_yolo
from detection.data.image_io import ImageDecodeError, read_image_rgb, read_image_size
from detection.data.records import (DetectionDataset, ImageRecord, ScanReport, concat_datasets, sample_dataset,
                                    set_exhaustive, voc_photo_id, without_photos_of)
from detection.data.tiny_imagenet import read_tiny_imagenet
from detection.data.voc import read_ilsvrc_det, read_voc

__all__ = ["read_coco", "read_yolo", "read_voc", "read_ilsvrc_det", "read_tiny_imagenet", "concat_datasets",
           "sample_dataset", "set_exhaustive", "DetectionDataset", "ImageRecord", "ScanReport", "ImageDecodeError",
           "read_image_rgb", "read_image_size", "voc_photo_id", "without_photos_of"]
