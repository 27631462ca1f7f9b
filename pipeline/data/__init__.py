"""Datasets: KITTI and COCO-Traffic readers, synthetic scenes, curation, loading."""
