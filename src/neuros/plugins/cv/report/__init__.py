"""Reports: tables, safe output folders and provenance."""

from .output import atomic_output_dir, check_output_dir
from .tables import tables_markdown

__all__ = ["atomic_output_dir", "check_output_dir", "tables_markdown"]
