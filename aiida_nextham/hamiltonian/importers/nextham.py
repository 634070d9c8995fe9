"""The package's own HDF5 file as a registered format."""

from pathlib import Path

from ..hdf5 import is_nextham_hdf5, read_hdf5, write_hdf5
from . import Format, register_format

register_format(
    Format(
        name='nextham',
        description='aiida-nextham block-Hamiltonian HDF5 file (versioned schema)',
        detect=lambda path: Path(path).is_file() and is_nextham_hdf5(path),
        read=read_hdf5,
        write=write_hdf5,
    )
)
