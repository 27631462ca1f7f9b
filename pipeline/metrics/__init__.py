"""Evaluation metrics: COCO bbox AP, MMDetection-style VOC area AP50 and KITTI 2D AP40.

``evaluate_detections(coco, detections)`` runs all of them on a curated val set; the
submodules (:mod:`.coco`, :mod:`.voc`, :mod:`.kitti`) hold the pure-numpy implementations.
"""
from pipeline.metrics.evaluate import evaluate_detections

__all__ = ["evaluate_detections"]
