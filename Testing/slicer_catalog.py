"""Checks Python source that calls Slicer against ``../shared/slicer-api/catalog.json``.

Slicer cannot be installed here; the catalog lists the names of its scriptable API, read from
Slicer's own sources. VTK's own classes are not in it: they are introspected from the ``vtk``
package. :meth:`SlicerCatalog.check` walks a module's AST and reports every ``slicer.*`` name (also
``from slicer... import name``) and every MRML/VTK-style method call (``obj.CapitalisedName(...)``)
that neither knows. Calls on other
imported modules (``threading.Thread()``) are not methods; ``qt.Name`` must be a Qt class (PySide6 is
the reference for PythonQt's ``qt`` module).
"""

from __future__ import annotations

import ast
import json
from functools import cached_property
from pathlib import Path

CATALOG = Path(__file__).resolve().parents[2] / "shared" / "slicer-api" / "catalog.json"
UTIL = "Base/Python/slicer/util.py"
SCRIPTED = "Base/Python/slicer/ScriptedLoadableModule.py"
RUNTIME_NAMES = {"mrmlScene", "app", "modules", "util", "ScriptedLoadableModule"}
"""Attributes Slicer's application sets on the ``slicer`` module at start-up (not in any source
file's top level, so not in the catalog)."""
VTK_DATA_CLASSES = ("vtkPointData", "vtkDataArray", "vtkMatrix4x4", "vtkCollection")
"""VTK classes that catalog getters return (``image.GetPointData()``): their methods are known."""


def qt_class(name: str):
    """The PySide6 class a PythonQt ``qt.<name>`` stands for (None if Qt has no such class)."""
    from PySide6 import QtCore, QtGui, QtWidgets

    return next((getattr(m, name) for m in (QtWidgets, QtGui, QtCore) if hasattr(m, name)), None)


def imported_modules(tree: ast.AST) -> set[str]:
    """Names bound by ``import x`` / ``import x as y`` in ``tree``."""
    return {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.Import) for alias in node.names}


class SlicerCatalog:
    def __init__(self, path: Path = CATALOG):
        data = json.loads(Path(path).read_text())
        self.classes: dict[str, dict] = data["classes"]
        self.python: dict[str, dict] = data["python"]

    @cached_property
    def util_names(self) -> set[str]:
        util = self.python[UTIL]
        return set(util["functions"]) | set(util["classes"])

    @cached_property
    def scripted_names(self) -> set[str]:
        return set(self.python[SCRIPTED]["classes"])

    def module_names(self, module: str) -> set[str]:
        """Top-level functions and classes of Slicer's Python module ``module`` (a package: of all
        its files, which its ``__init__`` imports with ``*``); empty if the catalog has no such module."""
        path = "Base/Python/" + module.replace(".", "/")
        return {name for file, entry in self.python.items()
                if file == path + ".py" or file.startswith(path + "/")
                for name in (*entry["functions"], *entry["classes"])}

    def imported_name_known(self, module: str, name: str) -> bool:
        """Whether ``from <module> import <name>`` names something in Slicer's ``module``."""
        if module == "slicer":
            return name in RUNTIME_NAMES or self.has_class(name)
        return name in self.module_names(module)

    def vtk_class(self, name: str):
        import vtk

        return getattr(vtk, name, None)

    def has_class(self, name: str) -> bool:
        return name in self.classes or (name.startswith("vtk") and self.vtk_class(name) is not None)

    def method_names(self, name: str) -> set[str]:
        """Names a class declares or inherits: catalog classes walk their bases, VTK classes are
        introspected."""
        if name in self.classes:
            entry = self.classes[name]
            names = set(entry["names"])
            for base in entry["bases"]:
                names |= self.method_names(base)
            return names
        cls = self.vtk_class(name) if name.startswith("vtk") else None
        return set(dir(cls)) if cls is not None else set()

    @cached_property
    def all_methods(self) -> set[str]:
        """Every method name of every catalog class, with their VTK bases."""
        names: set[str] = set()
        for name in (*self.classes, *VTK_DATA_CLASSES):
            names |= self.method_names(name)
        return names

    def check(self, source: str, filename: str = "<source>") -> list[str]:
        """Problems (``file:line: message``) for unknown Slicer names and methods in ``source``."""
        tree = ast.parse(source, filename)
        vtk_used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name) and node.value.id == "vtk"}
        methods = self.all_methods.union(*(self.method_names(name) for name in vtk_used))
        modules = imported_modules(tree) - {"slicer", "vtk"}
        problems = []
        for node in ast.walk(tree):
            where = f"{filename}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "slicer":
                problems += [f"{where}: from {node.module} import {alias.name} is not in the catalog"
                             for alias in node.names
                             if not self.imported_name_known(node.module, alias.name)]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner, name = node.value.id, node.attr
                if owner == "vtk" and self.vtk_class(name) is None:
                    problems.append(f"{where}: vtk.{name} is not in the vtk package")
                elif owner == "slicer" and not (name in RUNTIME_NAMES or self.has_class(name)):
                    problems.append(f"{where}: slicer.{name} is not in the catalog")
                elif owner == "qt" and qt_class(name) is None:
                    problems.append(f"{where}: qt.{name} is not a Qt class")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "slicer"):
                module, name = node.value.attr, node.attr
                known = {"util": self.util_names, "ScriptedLoadableModule": self.scripted_names}
                if module in known and name not in known[module]:
                    problems.append(f"{where}: slicer.{module}.{name} is not in the catalog")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in modules)
                    and node.func.attr[:1].isupper() and node.func.attr not in methods
                    and not self.has_class(node.func.attr)):
                problems.append(f"{where}: method {node.func.attr} is on no catalog or VTK class")
        return problems
