"""Shared fixtures: random oblique, flipped, anisotropic geometries; one torch thread per module."""

import numpy as np
import pytest
import torch


def random_ijk_to_ras(rng: np.random.Generator, spacing=(0.7, 1.1, 3.0), flip=True) -> np.ndarray:
    """A rigid rotation (optionally with a flipped axis) times anisotropic spacing, plus an origin."""
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if flip and np.linalg.det(q) > 0:
        q[:, 0] *= -1
    matrix = np.eye(4)
    matrix[:3, :3] = q * np.asarray(spacing)
    matrix[:3, 3] = rng.uniform(-120, 120, size=3)
    return matrix


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy 2-core machine: one thread each avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
