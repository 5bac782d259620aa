"""Files others can read (issue 23 item 5): everything ka2er writes has the mode the user's umask
gives a new file or folder (0644 and 0755 under umask 022), whatever makes it private on the way
(mkstemp, mkdtemp, and safetensors itself, which writes 0600): a server under a service account
reads a colleague's bundle. The umask is read without changing it (threads write meanwhile)."""

import contextlib
import os
import stat

import pytest
import torch

import ka2er_core.io.atomic as atomic_module
from importer_fixtures import ARCH, ReferenceUNet, randomised, write_model_folder
from ka2er_core.bundle import Segmenter, save_bundle, save_moe_bundle
from ka2er_core.cli import main
from ka2er_core.evaluation.report import summarise, write_report
from ka2er_core.io.atomic import current_umask
from ka2er_core.modeling import ModelConfig, PromptableSegmenter
from ka2er_core.modeling.gate import Gate
from ka2er_core.modeling.normalization import Normalization
from ka2er_core.training.loop import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@contextlib.contextmanager
def umask(value):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root):
    """{path under root: mode} of every file and folder under ``root`` (root included)."""
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def wrong(root, file_mode, folder_mode):
    """The paths under ``root`` whose mode is not ``file_mode`` (files) or ``folder_mode`` (folders)."""
    return {path: oct(mode) for path, mode in modes(root).items()
            if mode != (folder_mode if os.path.isdir(os.path.join(root, path)) else file_mode)}


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    models = [Segmenter(name, PromptableSegmenter(ModelConfig.tiny()).eval(), Normalization("mr"),
                        1.5, 4.0) for name in ("general", "liver")]
    return models, Gate.for_model(["general", "liver"], models[0].model).eval()


def write_everything(root, members):
    """A bundle, a moe bundle, an imported nnU-Net expert, a MONAI export, a training checkpoint and
    an evaluation report, each in folders made for it; returns the folders ka2er made."""
    models, gate = members
    made = [root / "new" / "student"]
    save_bundle(made[0], models[0], labels=["liver"])
    made.append(save_moe_bundle(root / "moe", models, gate, labels=["liver"]))
    write_model_folder(root / "nnunet", randomised(ReferenceUNet(ARCH, 3)), "CTNormalization")
    assert main(["bundle", "import-nnunet", str(root / "nnunet"), "--out", str(root / "expert")]) == 0
    assert main(["bundle", "export", str(root / "expert"), "--monai", str(root / "monai")]) == 0
    save_checkpoint(root / "run" / "checkpoint", models[1].model, torch.optim.SGD(
        models[1].model.parameters(), lr=0.1), 1, [])
    write_report(summarise([], {"first": "box"}), root / "evaluation")
    return made + [root / "expert", root / "monai", root / "run", root / "evaluation", root / "new"]


def test_under_umask_022_every_file_is_0644_and_every_folder_0755(tmp_path, members):
    with umask(0o022):
        made = write_everything(tmp_path, members)
    for folder in made:
        assert wrong(folder, 0o644, 0o755) == {}, folder
    weights = {path for folder in made for path in modes(folder) if path.endswith(".safetensors")}
    assert len(weights) >= 5  # the writer that made them private (0600) was there


def test_the_modes_follow_the_umask(tmp_path, members):
    with umask(0o027):
        made = write_everything(tmp_path, members)
    for folder in made:
        assert wrong(folder, 0o640, 0o750) == {}, folder


def test_the_umask_is_read_without_changing_it(monkeypatch):
    """Setting the umask to read it would give a file another thread makes meanwhile the wrong mode."""
    with umask(0o027), monkeypatch.context() as patched:
        patched.setattr(atomic_module.os, "umask", lambda value: pytest.fail("umask changed"))
        assert current_umask() == 0o027
