"""``ArpesData``: an ARPES intensity (an ``xarray.DataArray`` named ``intensity``) as an AiiDA node.

The node stores the NetCDF file written by :func:`aiida_nextham.arpes.data.to_netcdf` in its repository
and a summary of it as attributes, so data sets can be found with the QueryBuilder (by dimensions,
coordinate ranges, photon energy, temperature, source format, ...) without opening any file.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np
from aiida import orm
from aiida.common.exceptions import ValidationError

from ..arpes.data import METADATA_UNITS, read_netcdf, to_netcdf, validate

__all__ = ('ArpesData',)


class ArpesData(orm.Data):
    """ARPES data (NetCDF file in the repository, summary in the attributes).

    Attributes (all queryable): ``dims`` (e.g. ``['phi', 'eV']``), ``shape``, ``size``, ``dtype``,
    ``coordinates`` (``{name: {'min', 'max', 'size', 'units'}}`` of every coordinate, dimension or not;
    e.g. ``attributes.coordinates.eV.min``), ``energy_axis`` (``'binding'``, ``'kinetic'`` or None),
    ``momentum`` (True when the data are on k axes), the metadata of
    :data:`~aiida_nextham.arpes.data.METADATA_UNITS` that the file gives (``photon_energy``,
    ``temperature``, ``energy_resolution``, ``angle_resolution``, ``work_function``,
    ``inner_potential``), ``source_format``, ``source_file`` (file name only), ``model`` (name of the
    tight-binding model of simulated data) and ``filename``.
    """

    FILENAME = 'intensity.nc'
    _REQUIRED_ATTRIBUTES = ('dims', 'shape', 'coordinates', 'source_format', 'filename')

    def __init__(self, dataarray, **kwargs):
        """Construct from an ``intensity`` DataArray (validated, then written to the repository).

        :raises ValueError: when the DataArray is not valid ARPES data (the message says why).
        """
        validate(dataarray)  # before creating the database model
        super().__init__(**kwargs)
        self._set_dataarray(dataarray)

    @classmethod
    def from_file(cls, path: str | pathlib.Path, format: str | None = None, **kwargs) -> ArpesData:
        """Read any supported ARPES file (format from the suffix and content unless given) into a new node.

        :raises FileNotFoundError: if ``path`` does not exist.
        :raises ArpesFormatError: (a ValueError) when the file is of another type, truncated or of an
            unknown layout; the message lists the supported formats.
        """
        from ..arpes.readers import load

        return cls(load(path, format), **kwargs)

    # ------------------------------------------------------------------------------------ content
    def _set_dataarray(self, da) -> None:
        with tempfile.TemporaryDirectory() as dirpath:
            filepath = to_netcdf(da, pathlib.Path(dirpath) / self.FILENAME)
            self.base.repository.put_object_from_file(str(filepath), self.FILENAME)
        self.base.attributes.set_many(self.summarise(da) | {'filename': self.FILENAME})

    @staticmethod
    def summarise(da) -> dict:
        """The query attributes of an ``intensity`` DataArray (see the class docstring)."""
        coordinates = {}
        for name, coord in da.coords.items():
            values = np.asarray(coord.values, dtype=np.float64)
            coordinates[str(name)] = {
                'min': float(values.min()),
                'max': float(values.max()),
                'size': int(values.size),
                'units': str(coord.attrs.get('units', '')),
            }
        summary = {
            'dims': [str(dim) for dim in da.dims],
            'shape': [int(n) for n in da.shape],
            'size': int(da.size),
            'dtype': str(da.dtype),
            'coordinates': coordinates,
            'energy_axis': da.attrs.get('energy_axis'),
            'momentum': any(dim in da.dims for dim in ('kx', 'ky', 'kz')),
            'source_format': da.attrs.get('source_format') or 'xarray',
            'source_file': da.attrs.get('source_file'),
        }
        for key in METADATA_UNITS:
            if key in da.attrs:
                summary[key] = float(da.attrs[key])
        if 'model' in da.attrs:  # simulated data carry their model spec as JSON
            try:
                summary['model'] = json.loads(da.attrs['model']).get('name')
            except (ValueError, AttributeError):
                pass
        return summary

    def _validate(self) -> bool:
        super()._validate()
        for key in self._REQUIRED_ATTRIBUTES:
            if self.base.attributes.get(key, None) is None:
                raise ValidationError(f'attribute {key!r} is not set')
        if self.filename not in self.base.repository.list_object_names():
            raise ValidationError(f'the repository has no {self.filename!r}')
        return True

    def get_dataarray(self):
        """Read the stored file back into an ``intensity`` DataArray (validated, in memory)."""
        with self.base.repository.as_path(self.filename) as filepath:
            return read_netcdf(filepath)

    def export(self, path: str | pathlib.Path) -> pathlib.Path:
        """Copy the stored NetCDF file to ``path``, atomically (an existing file is replaced)."""
        import shutil

        from ..engine.cli import atomic_output

        path = pathlib.Path(path)
        with atomic_output(path) as tmp:
            with self.base.repository.open(self.filename, 'rb') as source, tmp.open('wb') as target:
                shutil.copyfileobj(source, target)
        return path

    # --------------------------------------------------------------------------------- properties
    @property
    def filename(self) -> str:
        return self.base.attributes.get('filename', self.FILENAME)

    @property
    def dims(self) -> list[str]:
        return self.base.attributes.get('dims')

    @property
    def shape(self) -> list[int]:
        return self.base.attributes.get('shape')

    @property
    def energy_axis(self) -> str | None:
        """``'binding'`` (E − E_F), ``'kinetic'`` or None (no energy axis)."""
        return self.base.attributes.get('energy_axis', None)

    @property
    def photon_energy(self) -> float | None:
        """Photon energy, eV (None when the file does not give it)."""
        return self.base.attributes.get('photon_energy', None)

    @property
    def temperature(self) -> float | None:
        """Sample temperature, K (None when the file does not give it)."""
        return self.base.attributes.get('temperature', None)

    @property
    def source_format(self) -> str:
        return self.base.attributes.get('source_format')

    @property
    def summary(self) -> dict:
        """All summary attributes as a dict."""
        return dict(self.base.attributes.all)
