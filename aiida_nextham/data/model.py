"""``ModelData``: a trained NextHAM model (safetensors weights + JSON config) as an AiiDA node.

The two files of a model folder (``model.safetensors``, ``model.json``) live in the node repository;
the facts users query by are attributes: architecture, elements and their basis, number of
parameters, the training metrics and the size of the training set. Nothing but safetensors + JSON is
accepted, and nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import pathlib
import tempfile

from aiida import orm
from aiida.common.exceptions import ValidationError

from ..ml.serialization import METADATA, WEIGHTS, ModelFileError, read_model_metadata

__all__ = ('ModelData',)


class ModelData(orm.Data):
    """A trained model. Attributes: ``architecture``, ``elements`` (symbols), ``coverage``
    (``{symbol: {'shells', 'basis'}}``), ``basis_set``, ``cutoff`` (Å), ``use_h0``, ``n_parameters``,
    ``output_irreps``, ``dtype``, ``train_set_size``, ``metrics`` (training metrics), ``dft`` (the label
    engine's H0 settings the model expects) and ``format_version``."""

    def __init__(self, folder: str | pathlib.Path, **kwargs):
        """From a model folder written by ``nextham train`` (or ``serialization.save_model``).

        :raises ModelFileError: when the folder is not a safetensors + JSON model.
        """
        folder = pathlib.Path(folder)
        metadata = self.validate_folder(folder)
        super().__init__(**kwargs)
        for name in (WEIGHTS, METADATA):
            self.base.repository.put_object_from_file(str(folder / name), name)
        self.base.attributes.set_many(self._attributes(metadata))

    @staticmethod
    def validate_folder(folder: pathlib.Path) -> dict:
        """The metadata of ``folder`` once checked: format, version and the safetensors header."""
        from safetensors import safe_open

        metadata = read_model_metadata(folder)
        try:
            with safe_open(str(folder / WEIGHTS), framework='pt') as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise ModelFileError(f'{folder / WEIGHTS}: not a safetensors file ({exc})') from None
        return metadata

    @staticmethod
    def _attributes(metadata: dict) -> dict:
        from ase.data import chemical_symbols

        config = metadata['config']
        provenance = metadata.get('provenance') or {}
        elements = (provenance.get('coverage') or {}).get('elements') or {}
        coverage = {
            chemical_symbols[int(z)]: {
                'shells': list(shells),
                'basis': (elements.get(chemical_symbols[int(z)]) or {}).get('basis'),
            }
            for z, shells in config['shells'].items()
        }
        split = provenance.get('split') or {}
        dft = provenance.get('dft') or {}
        return {
            'architecture': metadata.get('architecture'),
            'format_version': metadata.get('format_version'),
            'elements': sorted(coverage),
            'coverage': coverage,
            'basis_set': dft.get('basis'),
            'dft': dft,
            'cutoff': float(config['cutoff']),
            'use_h0': bool(config.get('use_h0', True)),
            'n_parameters': int(metadata.get('n_parameters', 0)),
            'output_irreps': metadata.get('output_irreps'),
            'dtype': metadata.get('dtype'),
            'train_set_size': len(split.get('train', [])) or None,
            'metrics': provenance.get('metrics') or {},
        }

    def _validate(self) -> bool:
        super()._validate()
        names = self.base.repository.list_object_names()
        missing = [name for name in (WEIGHTS, METADATA) if name not in names]
        if missing:
            raise ValidationError(f'the repository has no {missing}')
        return True

    @property
    def metadata(self) -> dict:
        """The JSON metadata of the model (config, coverage, provenance)."""
        import json

        return json.loads(self.base.repository.get_object_content(METADATA))

    @contextlib.contextmanager
    def as_folder(self):
        """Context manager yielding a temporary folder with the two model files (for the engine)."""
        with tempfile.TemporaryDirectory() as dirpath:
            folder = pathlib.Path(dirpath)
            for name in (WEIGHTS, METADATA):
                with self.base.repository.open(name, 'rb') as source:
                    (folder / name).write_bytes(source.read())
            yield folder

    def load(self, device: str = 'cpu'):
        """The model as a torch module (from safetensors; never unpickled)."""
        from ..ml.serialization import load_model

        with self.as_folder() as folder:
            return load_model(folder, device=device)
