"""Experiments: the report's three, composed from one shared pipeline."""

from .registration import run_registration, shift_zero_fill
from .segmentation import run_crossmodal, run_segmentation
from .suite import SuiteConfig, run_suite

__all__ = ["SuiteConfig", "run_crossmodal", "run_registration", "run_segmentation", "run_suite", "shift_zero_fill"]
