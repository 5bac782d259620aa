"""The Slicer-name checker finds misspelled names and accepts correct ones (the module's own check
uses it once the module exists)."""

import textwrap

import pytest

from slicer_catalog import SlicerCatalog


@pytest.fixture(scope="module")
def catalog():
    return SlicerCatalog()


GOOD = textwrap.dedent("""
    import slicer, vtk
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
""")


def test_correct_slicer_calls_pass(catalog):
    assert catalog.check(GOOD) == []


@pytest.mark.parametrize("correct, misspelled", [
    ("slicer.util.arrayFromVolume", "slicer.util.arrayFromVolum"),
    ("GetIJKToRASMatrix", "GetIJKToRASMatrx"),
    ("slicer.vtkMRMLSegmentationNode", "slicer.vtkMRMLSegmentationNod"),
    ("vtk.vtkMatrix4x4", "vtk.vtkMatrix4x5"),
    ("GetNthControlPointPositionWorld", "GetNthControlPointPositionWrld"),
])
def test_a_misspelled_name_is_reported(catalog, correct, misspelled):
    source = GOOD.replace(correct, misspelled)
    assert source != GOOD
    problems = catalog.check(source, "snippet.py")
    assert any(misspelled in problem for problem in problems), problems
