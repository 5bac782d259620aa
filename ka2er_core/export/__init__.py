"""Exports of ka2er bundles into other tools' formats."""

from .monai_bundle import ExportError, export_monai_bundle

__all__ = ["ExportError", "export_monai_bundle"]
