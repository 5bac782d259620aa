"""Checks a Slicer module's Qt Designer (.ui) file and the Python that uses it.

:func:`unknown_classes` reports widget and layout classes that neither Qt, CTK nor the Slicer catalog
knows; :func:`ui_problems` reports ``self.ui.<name>`` accesses in Python source that name no object
in the .ui (``slicer.util.childWidgetVariables`` makes each named widget and layout such an
attribute).
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

CTK_CLASSES = {"ctkCollapsibleButton", "ctkPathLineEdit", "ctkSliderWidget", "ctkCheckBox"}
"""CTK widgets a Slicer .ui may use. The Slicer catalog does not list CTK (its README says so), so
the few this project's panels may need are named here."""
NAMED_ELEMENTS = ("widget", "layout", "action")


def ui_names(ui_path) -> set[str]:
    """Object names of the widgets, layouts and actions in a .ui file."""
    root = ET.parse(ui_path).getroot()
    return {element.get("name") for tag in NAMED_ELEMENTS for element in root.iter(tag)
            if element.get("name")}


def ui_classes(ui_path) -> set[str]:
    """Classes of the widgets and layouts in a .ui file."""
    root = ET.parse(ui_path).getroot()
    return {element.get("class") for tag in ("widget", "layout") for element in root.iter(tag)}


def unknown_classes(ui_path, catalog) -> list[str]:
    """Problems for each class in the .ui that is not a Qt widget class, a known CTK class or a
    class in the Slicer ``catalog``."""
    from PySide6 import QtWidgets

    return [f"{ui_path}: class {name} is not in Qt, CTK or the Slicer catalog"
            for name in sorted(ui_classes(ui_path))
            if not (hasattr(QtWidgets, name) or name in CTK_CLASSES or catalog.has_class(name))]


def ui_problems(source: str, ui_path, filename: str = "<source>") -> list[str]:
    """Problems (``file:line: message``) for each ``self.ui.<name>`` in ``source`` that the .ui
    does not define."""
    names = ui_names(ui_path)
    return [f"{filename}:{node.lineno}: self.ui.{node.attr} is not in {Path(ui_path).name}"
            for node in ast.walk(ast.parse(source, filename))
            if isinstance(node, ast.Attribute) and node.attr not in names
            and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"]
