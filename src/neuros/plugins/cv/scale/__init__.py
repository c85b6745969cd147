"""Whole volumes on ``dask.distributed``: blockwise features, segmentation and section alignment over zarr.

Inputs are zarr arrays or OME-Zarr groups (``convert_to_zarr`` makes them from TIFF stacks and NIfTI);
results are written to zarr block by block, each block marked done after its data, so an interrupted run
resumes where it stopped. See ``docs/scaling.md``.
"""

from .align import volume_align
from .cluster import dask_client
from .features import volume_features
from .resume import BlockFailures
from .segment import volume_segment
from .zarr_io import convert_to_zarr, open_volume

__all__ = [
    "BlockFailures",
    "convert_to_zarr",
    "dask_client",
    "open_volume",
    "volume_align",
    "volume_features",
    "volume_segment",
]
