"""Every Slicer, VTK and Qt name the KA2ERSegment module uses exists; the checker finds misspelled
names and accepts correct ones."""

import textwrap
from pathlib import Path

import pytest

from slicer_catalog import SlicerCatalog


@pytest.fixture(scope="module")
def catalog():
    return SlicerCatalog()


GOOD = textwrap.dedent("""
    import slicer, vtk
    from slicer import vtkMRMLScalarVolumeNode
    from slicer.parameterNodeWrapper import parameterNodeWrapper
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
    from slicer.util import VTKObservationMixin
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    array = slicer.util.arrayFromVolume(node)
    markups = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
    position = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPositionWorld(0, position)
    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.GetSegmentation().AddEmptySegment("target")
    matrix.MultiplyPoint([0, 0, 0, 1])
    import qt, threading
    timer = qt.QTimer()
    worker = threading.Thread(target=print)
""")
MODULE = Path(__file__).resolve().parents[1] / "KA2ERSegment"



def test_correct_slicer_calls_pass(catalog):
    assert catalog.check(GOOD) == []


@pytest.mark.parametrize("correct, misspelled", [
    ("slicer.util.arrayFromVolume", "slicer.util.arrayFromVolum"),
    ("GetIJKToRASMatrix", "GetIJKToRASMatrx"),
    ("slicer.vtkMRMLSegmentationNode", "slicer.vtkMRMLSegmentationNod"),
    ("vtk.vtkMatrix4x4", "vtk.vtkMatrix4x5"),
    ("GetNthControlPointPositionWorld", "GetNthControlPointPositionWrld"),
    ("qt.QTimer", "qt.QTimmer"),
    ("import vtkMRMLScalarVolumeNode", "import vtkMRMLScalarVolumeNod"),
    ("import parameterNodeWrapper", "import parameterNodeWraper"),
    ("import ScriptedLoadableModuleLogic", "import ScriptedLoadableModuleLogc"),
    ("from slicer.util import", "from slicer.utils import"),
])
def test_a_misspelled_name_is_reported(catalog, correct, misspelled):
    source = GOOD.replace(correct, misspelled)
    assert source != GOOD
    problems = catalog.check(source, "snippet.py")
    assert any(misspelled in problem for problem in problems), problems


def test_every_name_the_module_uses_exists(catalog):
    sources = sorted(MODULE.rglob("*.py"))
    assert MODULE / "KA2ERSegment.py" in sources and len(sources) >= 5
    problems = [problem for path in sources
                for problem in catalog.check(path.read_text(), str(path.relative_to(MODULE)))]
    assert problems == []
