"""Training the generalist: the promptable model on the data engine's scenes, in DataLoader workers.

Batches mix the engine's random targets (:mod:`ka2er_core.data.engine`) with the named targets of
dataset folders (the sample tasks), so that what the model learned to segment by name is kept while
it learns to segment whatever is prompted. Crops are cut by the session's own crop planner
(:func:`~ka2er_core.training.samples.make_crop_sample`); later clicks are simulated on the model's own
predictions (:class:`~ka2er_core.training.promptable.PromptableStep`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.engine import DataEngine, EngineConfig, Scene
from ..modeling.normalization import Normalization, subsample
from ..modeling.promptable import PromptableSegmenter
from ..volume import Volume
from .loop import LoopConfig, distributed_context, train_loop
from .promptable import (CropSampler, PromptableStep, collate, load_training_items, save_student,
                         starting_model)
from .samples import CropSample, LabelledImage, make_crop_sample


@dataclass(frozen=True)
class SceneCrops:
    """How crops are cut from scenes: the model's crop geometry and normalisation."""

    normalization: Normalization
    crop_size: int
    base_spacing: float
    max_spacing: float

    def sample(self, scene: Scene, stats, rng: np.random.Generator) -> Optional[CropSample]:
        """A crop around one of the scene's targets, drawn at random (None if it fell outside)."""
        target = scene.targets[int(rng.integers(len(scene.targets)))]
        mask = Volume(target.mask(scene).astype(np.uint8), scene.image.ijk_to_ras)
        item = LabelledImage(scene.image, mask, stats, scene.source, modality=scene.modality)
        return make_crop_sample(item, target.kind, (1,), self.normalization, self.crop_size,
                                self.base_spacing, self.max_spacing, rng, first=target.first)


class SceneSampler:
    """Batches of crops from a pool of scenes; each batch replaces one scene of the pool, so every
    scene serves about ``pool`` crops. With ``named`` (a :class:`CropSampler` over dataset folders),
    a share ``named_share`` of the crops come from it instead."""

    def __init__(self, engine: DataEngine, crops: SceneCrops, batch_size: int, pool: int = 4,
                 named: Optional[CropSampler] = None, named_share: float = 0.25,
                 max_extra_clicks: int = 4, correct_probability: float = 0.2,
                 drop_previous: float = 0.1):
        self.engine, self.crops, self.batch_size, self.pool_size = engine, crops, batch_size, pool
        self.named, self.named_share = named, named_share if named is not None else 0.0
        self.max_extra_clicks, self.correct_probability = max_extra_clicks, correct_probability
        self.drop_previous = drop_previous
        self.scenes: list[tuple[Scene, tuple]] = []

    def _new_scene(self, rng: np.random.Generator) -> tuple[Scene, tuple]:
        scene = self.engine.scene(rng)
        array = scene.image.array
        return scene, self.crops.normalization.statistics(array, subsample(array))

    def sample(self, rng: np.random.Generator) -> CropSample:
        if rng.random() < self.named_share:
            return self.named.sample(rng)
        while True:
            scene, stats = self.scenes[int(rng.integers(len(self.scenes)))]
            crop = self.crops.sample(scene, stats, rng)
            if crop is not None:
                return crop

    def draw(self, rng: np.random.Generator) -> tuple[list[CropSample], dict]:
        if len(self.scenes) >= self.pool_size:
            self.scenes.pop(int(rng.integers(len(self.scenes))))
        while len(self.scenes) < self.pool_size:
            self.scenes.append(self._new_scene(rng))
        samples = [self.sample(rng) for _ in range(self.batch_size)]
        batch = collate(samples, rng, self.max_extra_clicks, self.correct_probability,
                        self.drop_previous)
        return samples, batch


class SceneBatches(torch.utils.data.IterableDataset):
    """An endless stream of batches, made in DataLoader workers; worker ``w`` of rank ``r`` draws
    from the seed (seed, rank, start step, w), so a resumed run draws new batches."""

    def __init__(self, make_sampler, seed: int, rank: int, start: int):
        super().__init__()
        self.make_sampler, self.seed, self.rank, self.start = make_sampler, seed, rank, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.seed, self.rank, self.start, worker])
        sampler = self.make_sampler()
        while True:
            yield sampler.draw(rng)[1]


@dataclass
class GeneralistConfig:
    steps: int
    batch_size: int = 4
    lr: float = 3e-4
    seed: int = 0
    workers: int = 1
    named_share: float = 0.25
    checkpoint_every: int = 50
    snapshot_every: int = 250


def make_scene_sampler(crops: SceneCrops, batch_size: int, named_folders: Sequence, named_share: float,
                       engine_config: EngineConfig) -> SceneSampler:
    named = None
    if named_folders and named_share > 0:
        items, targets = load_training_items(named_folders, crops.normalization)
        named = CropSampler(items, targets, crops.normalization, crops.crop_size, crops.base_spacing,
                            crops.max_spacing, batch_size)
    return SceneSampler(DataEngine(engine_config), crops, batch_size, named=named,
                        named_share=named_share)


def with_bands(model: PromptableSegmenter, channels: int) -> PromptableSegmenter:
    """``model`` grown to ``channels`` band features (:class:`~ka2er_core.modeling.config.ModelConfig`);
    the bands' weights start at zero, so the grown model predicts what ``model`` does until trained."""
    if model.config.band_channels == channels:
        return model
    if model.config.band_channels:
        raise ValueError(f"the model already has {model.config.band_channels} band channels, "
                         f"not {channels}")
    grown = PromptableSegmenter(replace(model.config, band_channels=channels))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("bands" in name for name in missing), (missing, unexpected)
    return grown.train()


def train_generalist(out: Path, config: GeneralistConfig, *, init: Optional[Path] = None,
                     named_folders: Sequence = (), base_spacing: Optional[float] = None,
                     max_spacing: Optional[float] = None, engine_config: EngineConfig = EngineConfig(),
                     band_channels: Optional[int] = None, progress=None) -> Path:
    """Train (or resume, from ``out/checkpoint``) the generalist and write it as a bundle to ``out``;
    ``band_channels`` grows the starting model (:func:`with_bands`)."""
    torch.manual_seed(config.seed)
    start = starting_model(None, init, base_spacing, max_spacing)
    if band_channels is not None:
        start.model = with_bands(start.model, band_channels)
    crops = SceneCrops(start.normalization, start.crop_size, start.base_spacing, start.max_spacing)
    rank, _, _ = distributed_context()
    checkpoint = Path(out) / "checkpoint" / "state.json"  # a resumed run draws batches anew from here
    resumed = int(json.loads(checkpoint.read_text())["step"]) if checkpoint.exists() else 0

    def make_sampler():
        return make_scene_sampler(crops, config.batch_size, named_folders, config.named_share,
                                  engine_config)

    stream = SceneBatches(make_sampler, config.seed, rank, resumed)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                              persistent_workers=config.workers > 0,
                                              prefetch_factor=2 if config.workers else None))
    waited = [0.0]

    def batches(step: int, rng: np.random.Generator) -> dict:
        t0 = time.perf_counter()
        batch = next(loader)
        waited[0] += time.perf_counter() - t0
        return batch

    loop = LoopConfig(steps=config.steps, lr=config.lr, seed=config.seed,
                      checkpoint_every=config.checkpoint_every, snapshot_every=config.snapshot_every)
    summary = train_loop(PromptableStep(start.model), start.model, batches, loop, Path(out), progress)
    summary["seconds_waiting_for_data"] = waited[0]
    save_student(out, start, named_folders, [], 0,
                 {"method": "generalist: data engine scenes "
                            f"({', '.join(f'{k} {v}' for k, v in engine_config.sources.items())}; "
                            f"families {', '.join(engine_config.families)}) + named targets "
                            f"{config.named_share}, iterative click simulation"
                            + (f", fine-tuned from {init}" if init else ""),
                  "batch_size": config.batch_size, **summary})
    return Path(out)
