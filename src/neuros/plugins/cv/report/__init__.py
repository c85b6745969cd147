"""Reports: tables, figures, HTML, notebooks and provenance (safe output folders: :mod:`neuros.plugins.cv.output`)."""

from .tables import tables_markdown

__all__ = ["tables_markdown"]
