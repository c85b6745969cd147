"""Datasets: synthetic proxies (the report's), file readers and public-dataset recipes."""

from . import synthetic
from .synthetic import MODALITIES, make_dataset

__all__ = ["MODALITIES", "make_dataset", "synthetic"]
