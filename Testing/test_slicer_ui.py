"""The module's .ui file uses only known widget classes and defines every ``self.ui.<name>`` the
module reads; the widgets it binds to the parameter node fit their members; the checks catch
misspellings; the panel renders to a PNG with plain Qt."""

import importlib
import os
import subprocess
import sys
import textwrap
import types
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import slicer_standin
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
    assert ui_problems(MODULE.read_text(encoding="utf-8"), UI, str(MODULE)) == []


@pytest.fixture
def parameter_members(monkeypatch):
    """The module's parameter node members and their types, read with the Slicer stand-in."""
    slicer_standin.install()
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.syspath_prepend(str(MODULE.parent))
    for name in [n for n in sys.modules if n == "KA2ERSegment" or n.startswith("KA2ERSegmentLib")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("KA2ERSegment")
    yield typing.get_type_hints(module.KA2ERSegmentParameterNode, include_extras=True)
    slicer_standin.uninstall()


def offered(widget) -> tuple:
    """What a .ui widget offers a parameter: node classes (a node combo box), a bool (a check box)
    or items (a combo box)."""
    if widget.get("class") == "qMRMLNodeComboBox":
        return "nodes", tuple(s.text for s in widget.find("property[@name='nodeTypes']").iter("string"))
    if widget.get("class") == "QCheckBox":  # Slicer's QCheckBoxToBoolConnector
        return "bool", ()
    return "items", tuple(item.findtext("property[@name='text']/string") for item in widget.iter("item"))


def needed(hint) -> tuple:
    """What Slicer's connectGui needs for a member: its node class, a check box for a bool, or
    the choices of a str."""
    if hint is bool:
        return "bool", ()
    if typing.get_origin(hint) is not typing.Annotated:
        return "nodes", (hint.__name__,)
    return "items", tuple(choice for annotation in typing.get_args(hint)[1:]
                          for choice in annotation.choices)


def test_widgets_bound_to_the_parameter_node_fit_their_members(parameter_members):
    bound = {widget.findtext("property[@name='SlicerParameterName']/string"): widget
             for widget in ET.parse(UI).getroot().iter("widget")
             if widget.find("property[@name='SlicerParameterName']") is not None}
    assert bound and set(bound) <= set(parameter_members)
    assert {member: offered(widget) for member, widget in bound.items()} \
        == {member: needed(parameter_members[member]) for member in bound}


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
