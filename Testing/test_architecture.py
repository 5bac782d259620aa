"""The architecture as the issue states it: no import cycles, the engine never imports Slicer, Qt or
VTK, models import no files or geometry, RAS becomes crop voxels only in the model space, and every
way of segmenting keeps the Session contract."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ka2er_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ka2er_core module ``path`` imports (absolute names; ``from . import x`` resolved), at
    any depth of the file (imports inside functions count: they run too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for neighbour in sorted(graph[node]):
            if state.get(neighbour) == 1:
                cycle = path[path.index(neighbour):] + [neighbour]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if neighbour not in state:
                visit(neighbour, path + [neighbour])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_engine_never_imports_slicer_qt_or_vtk():
    for path in PACKAGE.rglob("*.py"):
        roots = {name.split(".")[0] for name in imports_of(path)}
        assert not roots & {"slicer", "qt", "vtk", "ctk", "PythonQt"}, path


def test_models_import_no_data_files_or_geometry(graph):
    for name, imported in graph.items():
        if name.startswith("ka2er_core.modeling"):
            bad = {m for m in imported if m.split(".")[1] in {"data", "io", "geometry"}}
            assert not bad, (name, bad)


def test_ras_becomes_voxels_only_in_the_model_space_and_geometry():
    allowed = {"ka2er_core.geometry"}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name in allowed or name.startswith("ka2er_core.modelspace"):
            continue
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ras_to_ijk"]
        assert not calls, f"{name} calls ras_to_ijk"


def test_every_session_keeps_the_session_contract():
    from ka2er_core.bundle import load_bundle
    from ka2er_core.data.phantoms import ct_phantom
    from ka2er_core.demo import ShownSession
    from ka2er_core.evaluation.baseline import RandomWalkerSession
    from ka2er_core.inference import InteractiveSession
    from ka2er_core.inference.protocols import Session
    from ka2er_core.server.client import RemoteSession

    for cls in (InteractiveSession, RemoteSession, RandomWalkerSession, ShownSession):
        missing = [m for m in ("set_target", "add_point", "add_box", "mask") if not hasattr(cls, m)]
        assert not missing, (cls.__name__, missing)
    image = ct_phantom(10000, shape=(16, 24, 24)).image
    for session in (InteractiveSession(load_bundle(), device="cpu"), RandomWalkerSession()):
        session.set_image(image)
        assert isinstance(session, Session)
    assert not isinstance(object(), Session)


def test_both_promptable_architectures_keep_the_model_contract():
    """Both embed into the one Embedding type, shaped as their layouts say (what the gate and the
    amalgamation layer are built from), and make it again from their own stages."""
    import torch

    from ka2er_core.modeling import ModelConfig, PromptableSegmenter
    from ka2er_core.modeling.protocols import Embedding, PromptableModel
    from ka2er_core.modeling.sam_med3d import SamMed3D

    from importer_fixtures import TINY

    small = ModelConfig(crop_size=32, encoder_embed_dim=12, dim=32, decoder_mlp_dim=64, fine_channels=4)
    for model in (PromptableSegmenter(small).eval(), SamMed3D(TINY).eval()):
        assert isinstance(model, PromptableModel)
        size, layout = model.config.crop_size, model.layout
        image = torch.randn(1, 1, size, size, size)
        with torch.no_grad():
            embedding = model.embed(image)
            again = model.embed_from_stages(image, model.stages(image))
            tokens = model.prompt_tokens(torch.full((1, 2, 3), 5.0), torch.ones(1, 2, dtype=torch.long))
        assert isinstance(embedding, Embedding) and isinstance(embedding.detach(), type(embedding))
        assert embedding.tokens.shape == (1, layout.dim, *(size // layout.token_factor,) * 3)
        assert [tuple(s.shape) for s in embedding.stages] == [
            (1, c, *(size // f,) * 3) for c, f in zip(layout.stage_channels, layout.stage_factors)]
        assert set(layout.amalgamated) <= set(range(len(layout.stage_channels)))
        fine = () if embedding.fine is None else tuple(embedding.fine.shape)
        assert fine == (() if not layout.fine_channels else (1, layout.fine_channels, size, size, size))
        assert torch.equal(again.tokens, embedding.tokens) and tokens.shape == (1, 2, layout.dim)
    assert not isinstance(object(), PromptableModel)
