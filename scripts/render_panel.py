"""Renders the KA2ERSegment panel (its Qt Designer .ui file) to a PNG, and draws the module icon.

Slicer cannot run here, so the .ui is shown with plain Qt: each CTK/MRML widget class is replaced by
its nearest Qt counterpart (a collapsible button becomes a group box, a node combo box a combo box
with a plausible node name), properties Qt does not know are dropped, and the result is loaded with
PySide6's QUiLoader on an offscreen platform and grabbed as an image.

    python scripts/render_panel.py                  # -> Resources/Screenshots/panel.png
    python scripts/render_panel.py --ui X.ui --out panel.png
    python scripts/render_panel.py --icon           # -> the module's and the extension's icon
    python scripts/render_panel.py --icon --out icon.png
"""

from __future__ import annotations

import argparse
import os
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "KA2ERSegment" / "Resources" / "UI" / "KA2ERSegment.ui"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "panel.png"
ICONS = (ROOT / "KA2ERSegment" / "Resources" / "Icons" / "KA2ERSegment.png",
         ROOT / "Resources" / "Icons" / "KA2ERSegment.png")
PANEL_WIDTH = 420
ICON_SIZE = 128

QT_COUNTERPARTS = {"qMRMLWidget": "QWidget", "qMRMLNodeComboBox": "QComboBox",
                   "ctkCollapsibleButton": "QGroupBox", "ctkPathLineEdit": "QLineEdit"}
RENAMED_PROPERTIES = {"ctkCollapsibleButton": {"text": "title"}}
NODE_NAMES = {"vtkMRMLScalarVolumeNode": "MNI152 T1",
              "vtkMRMLSegmentationNode": "MNI152 T1 segmentation"}
"""The node a node combo box shows in the picture, by the node type it lists."""
STATUS = "Segment_1: 41 ms, confidence 0.93, answered by general"


def qt_ui(ui_text: str) -> bytes:
    """The .ui with every CTK/MRML class replaced by plain Qt, loadable by QUiLoader."""
    from PySide6 import QtWidgets

    root = ET.fromstring(ui_text)
    for section in ("customwidgets", "connections"):
        for element in root.findall(section):
            root.remove(element)
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original not in QT_COUNTERPARTS:
            continue
        node_type = widget.findtext("property[@name='nodeTypes']/stringlist/string")
        if node_type:
            item = ET.SubElement(ET.SubElement(widget, "item"), "property", name="text")
            ET.SubElement(item, "string").text = NODE_NAMES.get(node_type, node_type)
        widget.set("class", QT_COUNTERPARTS[original])
        meta = getattr(QtWidgets, QT_COUNTERPARTS[original]).staticMetaObject
        renames = RENAMED_PROPERTIES.get(original, {})
        for prop in widget.findall("property"):
            prop.set("name", renames.get(prop.get("name"), prop.get("name")))
            if meta.indexOfProperty(prop.get("name")) < 0:
                widget.remove(prop)
    return ET.tostring(root, encoding="utf-8")


def application():
    """The running QApplication, or a new one on the offscreen platform."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets

    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def render_panel(ui_path: Path, out: Path) -> None:
    """Loads the .ui as plain Qt, fills in a plausible session and saves a picture of it."""
    application()
    from PySide6 import QtCore, QtUiTools, QtWidgets

    buffer = QtCore.QBuffer()
    buffer.setData(qt_ui(Path(ui_path).read_text(encoding="utf-8")))
    buffer.open(QtCore.QIODevice.ReadOnly)
    panel = QtUiTools.QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError(f"QUiLoader could not load {ui_path}")
    panel.findChild(QtWidgets.QComboBox, "segmentComboBox").addItem("Segment_1")
    panel.findChild(QtWidgets.QPushButton, "positivePointButton").setChecked(True)
    panel.findChild(QtWidgets.QProgressBar, "progressBar").setValue(100)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText(STATUS)
    panel.setFixedWidth(PANEL_WIDTH)
    panel.adjustSize()
    save(panel.grab(), out)


def draw_icon(size: int = ICON_SIZE):
    """A shaded cube with a highlighted segment on one face and a click dot on the segment."""
    from PySide6 import QtCore, QtGui

    image = QtGui.QImage(size, size, QtGui.QImage.Format_ARGB32)
    image.fill(QtCore.Qt.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.Antialiasing)
    painter.scale(size / 128, size / 128)

    P = QtCore.QPointF
    top, upper_right, lower_right = P(64, 14), P(109, 40), P(109, 92)
    bottom, lower_left, upper_left, centre = P(64, 118), P(19, 92), P(19, 40), P(64, 66)
    faces = (((top, upper_right, centre, upper_left), "#dfe6ee"),
             ((upper_left, centre, bottom, lower_left), "#a9b7c8"),
             ((centre, upper_right, lower_right, bottom), "#8596ad"))
    outline = QtGui.QPen(QtGui.QColor("#3d4b5e"), 3)
    outline.setJoinStyle(QtCore.Qt.RoundJoin)
    for corners, colour in faces:
        painter.setPen(outline)
        painter.setBrush(QtGui.QColor(colour))
        painter.drawPolygon(QtGui.QPolygonF(list(corners)))

    # The segment: an ellipse in the right face's own (u, v) coordinates, u along the top edge.
    right_face = QtGui.QTransform(45, -26, 0, 52, 64, 66)
    painter.save()
    painter.setTransform(right_face, True)
    painter.setPen(QtCore.Qt.NoPen)
    painter.setBrush(QtGui.QColor(236, 112, 64, 230))
    painter.drawEllipse(P(0.5, 0.5), 0.36, 0.34)
    painter.restore()

    click = right_face.map(P(0.55, 0.45))
    painter.setPen(QtGui.QPen(QtCore.Qt.white, 2.5))
    painter.setBrush(QtGui.QColor("#2fbf4a"))
    painter.drawEllipse(click, 6.5, 6.5)
    painter.end()
    return image


def save(image, out: Path) -> None:
    """Writes a QImage or QPixmap to `out` as PNG, creating its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out)):
        raise RuntimeError(f"could not write {out}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", type=Path, default=UI, help="Qt Designer file to render")
    parser.add_argument("--out", type=Path,
                        help=f"PNG to write (default {SCREENSHOT.relative_to(ROOT)}, or with --icon "
                             "the module's and the extension's icon)")
    parser.add_argument("--icon", action="store_true", help="draw the module icon instead of the panel")
    args = parser.parse_args(argv)
    if args.icon:
        application()
        for out in [args.out] if args.out else ICONS:
            save(draw_icon(), out)
    else:
        render_panel(args.ui, args.out or SCREENSHOT)


if __name__ == "__main__":
    main()
