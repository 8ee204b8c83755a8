"""Training-data order and augmentation randomness that survive a resume and a change of process count.

``ResumableSampler`` is basicsr's ``EnlargedSampler`` (same epoch permutation over
``len(dataset) * ratio`` positions, split across ranks) with two additions:

* ``set_epoch(epoch, skip=n)`` starts the epoch after the rank's first ``n`` samples, so a resumed run
  continues mid-epoch exactly where the checkpoint was taken;
* it yields ``(index, seed)`` pairs. ``SeededDataset`` seeds ``random``, ``numpy`` and torch's CPU
  generator with ``seed`` before loading the sample, so each sample's crop/flip/rotation depends only
  on (manual_seed, epoch, position in the epoch): not on worker count, worker scheduling, resumes or
  which rank draws the sample. In the main process (``num_worker_per_gpu: 0``) the global generator
  states are restored afterwards, so data loading never changes the model's randomness (DropPath…).
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the sample at ``position`` of ``epoch``'s permutation."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ResumableSampler(Sampler):
    """Yields ``(dataset index, sample seed)`` for this rank; see the module docstring.

    Args:
        dataset_size: number of items in the dataset.
        num_replicas: world size.
        rank: this process's rank.
        ratio: basicsr's ``dataset_enlarge_ratio`` (the dataset is walked ``ratio`` times per epoch).
        seed: ``manual_seed``; identical on every rank.
    """

    def __init__(self, dataset_size: int, num_replicas: int = 1, rank: int = 0, ratio: int = 1, seed: int = 0
                 ) -> None:
        if dataset_size <= 0:
            raise ValueError('the training dataset is empty')
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.num_samples = math.ceil(dataset_size * ratio / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select ``epoch``'s permutation and skip this rank's first ``skip`` samples of it."""
        self.epoch = epoch
        self.skip = skip

    def positions(self) -> list[int]:
        """Global positions in the epoch's permutation that this rank draws, in order."""
        return list(range(self.rank, self.total_size, self.num_replicas))[self.skip:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100003 + self.epoch)
        permutation = torch.randperm(self.total_size, generator=generator).tolist()
        for position in self.positions():
            yield permutation[position] % self.dataset_size, sample_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


class DatasetWrapper(Dataset):
    """A dataset around ``dataset``: same length, and unknown attributes (``opt``…) read from it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # basicsr code reads dataset.opt and friends
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SeededDataset(DatasetWrapper):
    """Wraps a dataset so that item ``(index, seed)`` is loaded with all generators seeded by ``seed``."""

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        if torch.utils.data.get_worker_info() is not None:  # a worker's own generators need no restoring
            _seed_generators(seed)
            return self.dataset[index]
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                _seed_generators(seed)
                return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _seed_generators(seed: int) -> None:
    """Seed ``random``, ``numpy`` and torch's CPU generator (not CUDA's: data loading runs on the CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
