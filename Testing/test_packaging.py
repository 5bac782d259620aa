"""The README's quick start and CI agree, and the engine stays free of Slicer, Qt and VTK."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("ka2er demo") and "pytest" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


def test_engine_never_imports_slicer_qt_or_vtk():
    forbidden = {"slicer", "qt", "vtk", "ctk", "PythonQt"}
    for path in (ROOT / "ka2er_core").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path}: imports {name}"


def cmake_list(text: str, variable: str) -> list[str]:
    body = re.search(rf"set\({variable}\n(.*?)\n\s*\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "KA2ERSegment") for line in body.splitlines()]


def test_the_extension_builds_every_module_file_and_the_self_test():
    top = (ROOT / "CMakeLists.txt").read_text()
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({field} "https://\S+"\)', top), field
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top and 'set(EXTENSION_DEPENDS "PyTorch")' in top
    module = (ROOT / "KA2ERSegment" / "CMakeLists.txt").read_text()
    scripts = cmake_list(module, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(module, "MODULE_PYTHON_RESOURCES")
    folder = ROOT / "KA2ERSegment"
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(scripts) == on_disk
    assert all((folder / resource).is_file() for resource in resources)
    assert "slicerMacroBuildScriptedModule(" in module
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module
    assert "ka2er_core/*.py" in module and "ka2er_core/bundles/*" in module
