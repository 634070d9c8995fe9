"""``HamiltonianData``: a real-space block Hamiltonian H_ij(R), S_ij(R) (and H0) as an AiiDA node.

The node stores the versioned nextham HDF5 file in its repository and a summary of it as attributes,
so Hamiltonians can be found with the QueryBuilder (by formula, elements, basis, spin, source, ...)
without opening any file.
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
from aiida import orm
from aiida.common.exceptions import ValidationError

from ..hamiltonian.block import BlockHamiltonian, HamiltonianError
from ..hamiltonian.hdf5 import SCHEMA_VERSION, read_hdf5, write_hdf5

__all__ = ('HamiltonianData',)


class HamiltonianData(orm.Data):
    """A block Hamiltonian (nextham HDF5 file in the repository, summary in the attributes).

    Attributes (all queryable): ``formula``, ``elements``, ``n_atoms``, ``n_orbitals``, ``n_pairs``,
    ``spin``, ``basis`` (label such as ``'Mo:4s2p2d1f Te:2s2p2d1f'``), ``basis_set``, ``source_code``,
    ``source_format``, ``cutoff``, ``max_distance``, ``has_h0``, ``has_overlap``, ``complex``,
    ``fermi_level`` (eV), ``n_electrons``, ``schema_version`` and ``filename``.
    """

    FILENAME = 'hamiltonian.h5'
    _REQUIRED_ATTRIBUTES = (
        'formula',
        'n_atoms',
        'n_orbitals',
        'n_pairs',
        'spin',
        'schema_version',
        'filename',
    )

    def __init__(self, block_hamiltonian: BlockHamiltonian, source_format: str | None = None, **kwargs):
        """Construct from an in-memory block Hamiltonian (validated, then written to the repository).

        :param block_hamiltonian: the Hamiltonian to store.
        :param source_format: format it was read from (default: ``metadata['source_format']`` if set).
        """
        self.validate_block_hamiltonian(block_hamiltonian)  # before creating the database model
        super().__init__(**kwargs)
        self._set_block_hamiltonian(block_hamiltonian, source_format)

    @classmethod
    def from_file(cls, path: str | pathlib.Path, format: str | None = None, **kwargs) -> HamiltonianData:
        """Read any supported file or folder (format auto-detected unless given) into a new node.

        :raises HamiltonianError: when the file cannot be read or its content is inconsistent.
        """
        from ..hamiltonian.importers import detect_format, read

        format = format or detect_format(path)
        return cls(read(path, format), source_format=format, **kwargs)

    # ------------------------------------------------------------------------------------ content
    @staticmethod
    def validate_block_hamiltonian(bh: BlockHamiltonian) -> None:
        """Raise :class:`HamiltonianError` unless ``bh`` has finite blocks and every on-site block."""
        if not isinstance(bh, BlockHamiltonian):
            raise TypeError(f'expected a BlockHamiltonian, got {type(bh).__name__}')
        if bh.n_pairs == 0:
            raise HamiltonianError('the Hamiltonian has no blocks')
        for name in ('H', 'S', 'H0'):
            data = bh.matrix(name)
            if data is not None and not np.isfinite(data).all():
                raise HamiltonianError(f'{name} contains NaN or infinite values')
        onsite = bh.pairs[(bh.pairs[:, 3] == bh.pairs[:, 4]) & ~bh.pairs[:, :3].any(axis=1), 3]
        missing = np.setdiff1d(np.arange(bh.n_atoms), onsite)
        if len(missing):
            raise HamiltonianError(
                f'on-site blocks are missing for atom(s) {missing[:10].tolist()} (0-based)'
            )

    def _set_block_hamiltonian(self, bh: BlockHamiltonian, source_format: str | None) -> None:
        with tempfile.TemporaryDirectory() as dirpath:
            filepath = write_hdf5(bh, pathlib.Path(dirpath) / self.FILENAME)
            self.base.repository.put_object_from_file(str(filepath), self.FILENAME)
        summary = bh.summary()
        summary['elements'] = sorted({bh.basis[z].symbol for z in bh.numbers.tolist()})
        summary['source_format'] = source_format or bh.metadata.get('source_format')
        summary['schema_version'] = SCHEMA_VERSION
        summary['filename'] = self.FILENAME
        self.base.attributes.set_many(summary)

    def _validate(self) -> bool:
        super()._validate()
        for key in self._REQUIRED_ATTRIBUTES:
            if self.base.attributes.get(key, None) is None:
                raise ValidationError(f'attribute {key!r} is not set')
        if self.filename not in self.base.repository.list_object_names():
            raise ValidationError(f'the repository has no {self.filename!r}')
        return True

    def get_block_hamiltonian(self) -> BlockHamiltonian:
        """Read the stored file back into an in-memory :class:`BlockHamiltonian`."""
        with self.base.repository.as_path(self.filename) as filepath:
            return read_hdf5(filepath)

    def get_structure_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lattice (3, 3) rows in Å, Cartesian positions (n_atoms, 3) in Å and atomic numbers (n_atoms,).

        Reads only the structure group of the stored file (cheap for large Hamiltonians).
        """
        import h5py

        with self.base.repository.open(self.filename, 'rb') as handle, h5py.File(handle, 'r') as h5:
            return h5['structure/lattice'][()], h5['structure/positions'][()], h5['structure/numbers'][()]

    def get_structure(self) -> orm.StructureData:
        """The crystal structure as a new (unstored) ``StructureData``, Å."""
        from ase import Atoms

        lattice, positions, numbers = self.get_structure_arrays()
        return orm.StructureData(ase=Atoms(numbers=numbers, positions=positions, cell=lattice, pbc=True))

    def export(self, path: str | pathlib.Path, format: str = 'nextham') -> pathlib.Path:
        """Write the Hamiltonian to ``path`` in ``format``, atomically (``'nextham'`` copies the stored file).

        An existing file is replaced; an existing folder never is (:class:`HamiltonianError`).
        """
        import shutil

        from ..engine.cli import atomic_output
        from ..hamiltonian.importers import write

        path = pathlib.Path(path)
        with atomic_output(path) as tmp:
            if format == 'nextham':
                with self.base.repository.open(self.filename, 'rb') as source, tmp.open('wb') as target:
                    shutil.copyfileobj(source, target)
            else:
                write(self.get_block_hamiltonian(), tmp, format)
        return path

    # --------------------------------------------------------------------------------- properties
    @property
    def filename(self) -> str:
        return self.base.attributes.get('filename', self.FILENAME)

    @property
    def formula(self) -> str:
        return self.base.attributes.get('formula')

    @property
    def n_atoms(self) -> int:
        return self.base.attributes.get('n_atoms')

    @property
    def n_orbitals(self) -> int:
        return self.base.attributes.get('n_orbitals')

    @property
    def n_pairs(self) -> int:
        return self.base.attributes.get('n_pairs')

    @property
    def spin(self) -> str:
        return self.base.attributes.get('spin')

    @property
    def fermi_level(self) -> float | None:
        """Fermi level stored with the Hamiltonian, eV (None when unknown)."""
        return self.base.attributes.get('fermi_level', None)

    @property
    def n_electrons(self) -> float | None:
        return self.base.attributes.get('n_electrons', None)

    @property
    def summary(self) -> dict:
        """All summary attributes as a dict."""
        return dict(self.base.attributes.all)
