"""Datasets of block-Hamiltonian HDF5 label files, seeded splits and seeded loaders.

Files are read lazily, one structure per ``__getitem__``: a dataset object holds only file paths
(plus an optional bounded cache), so memory does not grow with the dataset, and the object pickles
cheaply into DataLoader workers and DDP processes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from ase.data import chemical_symbols
from torch.utils.data import DataLoader, Dataset, Sampler

from ..hamiltonian.basis import Basis
from ..hamiltonian.block import MATRICES, BlockHamiltonian
from ..hamiltonian.hdf5 import FORMAT_NAME, read_hdf5
from .graph import StructureGraph, build_graph, collate

__all__ = [
    'DatasetError',
    'EpochSampler',
    'FileHeader',
    'HamiltonianDataset',
    'Sample',
    'SeededLoader',
    'SPLIT_NAMES',
    'coverage',
    'describe_split',
    'epoch_seed',
    'make_loader',
    'read_header',
    'split_from_description',
    'split_indices',
]

SPLIT_NAMES = ('train', 'val', 'test')


class DatasetError(ValueError):
    """A dataset, one of its files or a split is unusable."""


@dataclass(eq=False)
class Sample:
    """One structure of a dataset: its graph and its block Hamiltonian (all stored blocks)."""

    graph: StructureGraph
    hamiltonian: BlockHamiltonian
    path: Path
    index: int


@dataclass(frozen=True)
class FileHeader:
    """What a label file holds, read without its blocks."""

    path: Path
    numbers: np.ndarray
    basis: Basis
    spin: str
    matrices: tuple[str, ...]
    n_pairs: int


def read_header(path: str | Path) -> FileHeader:
    """Atoms, basis, spin and the names of the stored matrices of a label file (blocks not read)."""
    path = Path(path)
    try:
        handle = h5py.File(path, 'r')
    except OSError as exc:
        raise DatasetError(f'{path}: not a readable HDF5 file ({exc})') from None
    with handle:
        if handle.attrs.get('format') != FORMAT_NAME:
            raise DatasetError(f'{path}: not a nextham block-Hamiltonian file')
        try:
            return FileHeader(
                path=path,
                numbers=handle['structure/numbers'][()],
                basis=Basis.from_json(handle['basis'].attrs['json']),
                spin=str(handle.attrs.get('spin', 'none')),
                matrices=tuple(name for name in MATRICES if name in handle.get('blocks', {})),
                n_pairs=int(handle['pairs'].shape[0]),
            )
        except KeyError as exc:
            raise DatasetError(f'{path}: missing {exc.args[0]!r}; the file is truncated') from None


def _missing_message(path: Path, missing: list[str]) -> str:
    return f'{path}: the dataset needs {", ".join(missing)}, which the file does not hold'


def _check_require(require: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(require) - set(MATRICES))
    if unknown:
        raise DatasetError(f'unknown matrices {unknown} in require; choose from {MATRICES}')
    return tuple(require)


class HamiltonianDataset(Dataset):
    """Label files (H0, H, S) as a map-style dataset of :class:`Sample`; files are read on access.

    :param paths: block-Hamiltonian HDF5 files (order defines the indices).
    :param cutoff: graph cutoff in Å (None: each file's largest stored pair distance).
    :param require: matrices every file must hold.
    :param dtype: floating dtype of the graphs.
    :param cache_size: keep up to this many samples in memory (least recently used first out).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        cutoff: float | None = None,
        require: Sequence[str] = ('H0', 'H', 'S'),
        *,
        dtype: torch.dtype = torch.float64,
        cache_size: int = 0,
    ):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DatasetError('the dataset is empty: no label files given')
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise DatasetError(f'{len(missing)} label file(s) do not exist, e.g. {missing[0]}')
        if cutoff is not None and cutoff <= 0:
            raise DatasetError(f'cutoff must be positive, got {cutoff}')
        if cache_size < 0:
            raise DatasetError(f'cache_size must be >= 0, got {cache_size}')
        self.cutoff = cutoff
        self.require = _check_require(require)
        self.dtype = dtype
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, Sample] = OrderedDict()

    @classmethod
    def from_folder(cls, folder: str | Path, pattern: str = '*.h5', **kwargs) -> HamiltonianDataset:
        """All files in ``folder`` matching ``pattern``, in sorted order."""
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f'{folder}: not a folder')
        paths = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not paths:
            raise DatasetError(f'the dataset is empty: no files match {pattern!r} in {folder}')
        return cls(paths, **kwargs)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """File names (what a split description records)."""
        return [p.name for p in self.paths]

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f'index {index} out of range for a dataset of {len(self)} files')
        index %= len(self)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        sample = self._load(index)
        if self.cache_size:
            self._cache[index] = sample
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return sample

    def _load(self, index: int) -> Sample:
        path = self.paths[index]
        bh = read_hdf5(path)
        missing = [name for name in self.require if bh.matrix(name) is None]
        if missing:
            raise DatasetError(_missing_message(path, missing))
        try:
            graph = build_graph(bh, self.cutoff, dtype=self.dtype)
        except ValueError as exc:
            raise DatasetError(f'{path}: {exc}') from exc
        return Sample(graph=graph, hamiltonian=graph.source, path=path, index=index)

    def headers(self) -> Iterator[FileHeader]:
        """The header of every file, in order (reads no blocks)."""
        for path in self.paths:
            yield read_header(path)

    def validate(self) -> None:
        """Check every file's header holds the required matrices (fast, reads no blocks)."""
        for header in self.headers():
            missing = [name for name in self.require if name not in header.matrices]
            if missing:
                raise DatasetError(_missing_message(header.path, missing))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_cache'] = OrderedDict()  # workers start with their own empty cache
        return state


# --------------------------------------------------------------------------------------------- coverage
def coverage(dataset: HamiltonianDataset) -> dict:
    """Elements of a dataset and each element's shells; every file must use the same basis per element.

    :returns: ``{'elements': {symbol: {'number', 'shells', 'basis', 'code', 'n_files'}},
        'spins': [...], 'n_files': int}`` (JSON-serialisable).
    :raises DatasetError: naming the first file whose basis for an element differs from an earlier file.
    """
    elements: dict[int, dict] = {}
    first_file: dict[int, Path] = {}
    spins: set[str] = set()
    for header in dataset.headers():
        spins.add(header.spin)
        for z in sorted(set(header.numbers.tolist())):
            element = header.basis[z]
            entry = {'shells': list(element.shells), 'basis': header.basis.name, 'code': header.basis.code}
            if z not in elements:
                elements[z] = {'number': z, **entry, 'n_files': 0}
                first_file[z] = header.path
            known = {key: elements[z][key] for key in entry}
            if known != entry:
                raise DatasetError(
                    f'{header.path}: basis of {chemical_symbols[z]} is {entry}, but {first_file[z]} '
                    f'uses {known}; a dataset must use one basis per element'
                )
            elements[z]['n_files'] += 1
    return {
        'elements': {chemical_symbols[z]: elements[z] for z in sorted(elements)},
        'spins': sorted(spins),
        'n_files': len(dataset),
    }


# ------------------------------------------------------------------------------------------------ split
def split_indices(
    n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[int]]:
    """Seeded random train/val/test split of ``range(n)``; each list sorted, every index exactly once.

    Sizes are the rounded fractions of ``n`` for val and test; train gets the rest and at least one.
    """
    if n < 1:
        raise DatasetError(f'cannot split an empty dataset (n={n})')
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3:
        raise DatasetError(f'fractions must be (train, val, test), got {fractions}')
    if any(not math.isfinite(f) or f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(f'fractions must be non-negative and sum to 1, got {fractions}')
    if fractions[0] <= 0:
        raise DatasetError(f'the train fraction must be positive, got {fractions[0]}')
    if seed < 0:
        raise DatasetError(f'seed must be >= 0, got {seed}')
    sizes = [0, round(fractions[1] * n), round(fractions[2] * n)]
    while sizes[1] + sizes[2] > n - 1:  # keep at least one training structure
        sizes[1 if sizes[1] >= sizes[2] else 2] -= 1
    sizes[0] = n - sizes[1] - sizes[2]
    order = np.random.default_rng(np.random.SeedSequence([int(seed), n])).permutation(n)
    bounds = np.cumsum([0, *sizes])
    return {
        name: sorted(int(i) for i in order[bounds[k] : bounds[k + 1]]) for k, name in enumerate(SPLIT_NAMES)
    }


def describe_split(
    split: dict[str, list[int]],
    *,
    seed: int,
    fractions: Sequence[float],
    names: Sequence[str] | None = None,
) -> dict:
    """JSON-serialisable record of a split (for checkpoints); ``names`` are the dataset's file names."""
    record = {
        'seed': int(seed),
        'fractions': [float(f) for f in fractions],
        'n': sum(len(split[key]) for key in SPLIT_NAMES),
        **{key: [int(i) for i in split[key]] for key in SPLIT_NAMES},
    }
    if names is not None:
        record['files'] = {key: [str(names[i]) for i in split[key]] for key in SPLIT_NAMES}
    return record


def split_from_description(description: dict, names: Sequence[str] | None = None) -> dict[str, list[int]]:
    """The split recorded by :func:`describe_split`; checked against the dataset's file names if given."""
    try:
        split = {key: [int(i) for i in description[key]] for key in SPLIT_NAMES}
        n = int(description['n'])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f'not a split description ({exc})') from None
    if sorted(i for key in SPLIT_NAMES for i in split[key]) != list(range(n)):
        raise DatasetError('split description does not cover 0..n-1 exactly once')
    if names is not None:
        if len(names) != n:
            raise DatasetError(f'the split was made for {n} files, the dataset has {len(names)}')
        recorded = description.get('files')
        if recorded is not None:
            for key in SPLIT_NAMES:
                now = [str(names[i]) for i in split[key]]
                if now != list(recorded[key]):
                    raise DatasetError(f'the {key} files differ from those recorded in the split')
    return split


# ----------------------------------------------------------------------------------------------- loader
def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from (seed, epoch), stable across platforms and library versions."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


class EpochSampler(Sampler[int]):
    """Yields dataset ``indices`` in an order fixed by (seed, epoch), optionally sharded over ranks.

    Like ``DistributedSampler``: with ``world_size > 1`` the shuffled list is padded by wrapping to a
    multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th item from ``r``.
    """

    def __init__(
        self,
        indices: Sequence[int],
        shuffle: bool = True,
        seed: int = 0,
        *,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not len(indices):
            raise DatasetError('cannot sample from an empty index list')
        if not 0 <= rank < world_size:
            raise DatasetError(f'rank {rank} outside 0..{world_size - 1}')
        self.indices = [int(i) for i in indices]
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), int(epoch)
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The indices this rank visits in the current epoch."""
        order = list(self.indices)
        if self.shuffle:
            rng = np.random.default_rng(epoch_seed(self.seed, self.epoch))
            order = [order[k] for k in rng.permutation(len(order))]
        total = math.ceil(len(order) / self.world_size) * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.world_size)


class SeededLoader(DataLoader):
    """A DataLoader whose batches (order and worker seeds) depend only on (seed, epoch).

    Iterating twice in the same epoch gives the same batches; call :meth:`set_epoch` before each epoch.
    It never draws from torch's global random state, so resuming at an epoch reproduces the run.
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs):
        self.epoch_sampler = sampler
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch_sampler.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.epoch_sampler.epoch

    def __iter__(self):
        self.generator.manual_seed(epoch_seed(self.epoch_sampler.seed + 1, self.epoch_sampler.epoch))
        return super().__iter__()


def make_loader(
    dataset: Dataset,
    indices: Sequence[int],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    *,
    epoch: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> SeededLoader:
    """A loader of :class:`~aiida_nextham.ml.graph.GraphBatch` over ``dataset[indices]``.

    :param shuffle: reorder every epoch with a generator seeded by (seed, epoch).
    :param rank, world_size: shard for distributed training (each rank gets ``ceil(n / world_size)``).
    """
    if batch_size < 1:
        raise DatasetError(f'batch_size must be >= 1, got {batch_size}')
    sampler = EpochSampler(indices, shuffle, seed, epoch=epoch, rank=rank, world_size=world_size)
    return SeededLoader(
        dataset,
        sampler,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate,
    )
