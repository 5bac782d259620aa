"""The module's .ui file uses only known widget classes and defines every ``self.ui.<name>`` the
module reads; the checks catch misspellings; the panel renders to a PNG with plain Qt."""

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from slicer_catalog import SlicerCatalog
from slicer_ui import ui_names, ui_problems, unknown_classes

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "KA2ERSegment" / "Resources" / "UI" / "KA2ERSegment.ui"
MODULE = ROOT / "KA2ERSegment" / "KA2ERSegment.py"
RENDER = ROOT / "scripts" / "render_panel.py"


@pytest.fixture(scope="module")
def catalog():
    return SlicerCatalog()


def test_ui_classes_are_known(catalog):
    assert unknown_classes(UI, catalog) == []


def test_ui_has_the_panel_widgets():
    assert {"volumeSelector", "segmentationSelector", "segmentComboBox", "loadModelButton",
            "positivePointButton", "statusLabel", "progressBar"} <= ui_names(UI)


def test_node_combo_boxes_follow_the_scene():
    """Each node combo box gets the scene from the top qMRMLWidget, as Slicer's template wires it."""
    root = ET.parse(UI).getroot()
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "KA2ERSegment")
    combo_boxes = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    wired = {c.findtext("receiver") for c in root.iter("connection")
             if (c.findtext("sender"), c.findtext("signal"), c.findtext("slot"))
             == ("KA2ERSegment", "mrmlSceneChanged(vtkMRMLScene*)", "setMRMLScene(vtkMRMLScene*)")}
    assert combo_boxes and combo_boxes <= wired


def test_unknown_class_is_reported(catalog, tmp_path):
    misspelled = tmp_path / "misspelled.ui"
    misspelled.write_text(UI.read_text(encoding="utf-8").replace(
        'class="qMRMLNodeComboBox" name="volumeSelector"',
        'class="qMRMLNodeComboBoxx" name="volumeSelector"'), encoding="utf-8")
    problems = unknown_classes(misspelled, catalog)
    assert len(problems) == 1 and "qMRMLNodeComboBoxx" in problems[0]


def test_module_uses_only_ui_names():
    if not MODULE.exists():
        pytest.skip(f"{MODULE.name} is not written yet")
    assert ui_problems(MODULE.read_text(encoding="utf-8"), UI, str(MODULE)) == []


def test_misspelled_ui_name_is_reported():
    source = textwrap.dedent("""
        class Widget:
            def setup(self):
                self.ui.volumeSelector.enabled = True
                self.ui.volumeSelectr.enabled = False
                other.ui.notChecked = 1
    """)
    assert ui_problems(source, UI, "snippet.py") == [
        "snippet.py:5: self.ui.volumeSelectr is not in KA2ERSegment.ui"]


@pytest.mark.parametrize("extra", [[], ["--icon"]], ids=["panel", "icon"])
def test_render_script_writes_png(tmp_path, extra):
    out = tmp_path / "picture.png"
    subprocess.run([sys.executable, str(RENDER), *extra, "--out", str(out)], check=True,
                   timeout=30, capture_output=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000
