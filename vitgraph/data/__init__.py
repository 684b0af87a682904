"""Datasets and the input pipeline: readers for the official formats (datasets.py, formats.py),
downloads (sources.py), batched augmentations on the device (augment.py, policies.py) and the
loaders (pipeline.py). `load_dataset(name)` is the entry point; importing this package loads
numpy only (torch is imported by augment, policies and pipeline)."""
from .datasets import NAMES, Dataset, load_dataset

__all__ = ["NAMES", "Dataset", "load_dataset"]
