"""``NexthamPredictCalculation``: ``nextham predict`` (H0 -> model -> H, bands, DOS, gap) on any computer.

Everything the engine reads is written into the working directory from input nodes (no local paths):

- ``model/model.safetensors`` and ``model/model.json``: the two files of the ``model`` node. The
  weights are copied byte for byte. When H0 is built by the engine (``structures`` without ``h0``),
  the copy of ``model.json`` names ``pseudo/gth.dat`` as the pseudopotential of the model's H0
  settings: ``nextham predict`` takes the pseudopotential from there, so the engine computes with
  exactly the files of the ``pseudos`` nodes recorded in the provenance;
- ``structures/<label>.xyz``: extended XYZ (cell, pbc, Å) of every ``structures`` input;
- ``h0/<label>.h5``: the nextham HDF5 file of every ``h0`` input (H0 and S, e.g. DFT labels);
- ``pseudo/gth.dat``: the GTH entry of every element (CP2K format, one file), from ``pseudos``.

The engine writes into the working directory ``<label>.h5`` (predicted H with H0 and S; retrieved
temporarily: it becomes a ``HamiltonianData``), ``<label>.json``, ``<label>.bands.json|png``,
``<label>.dos.json|png`` and ``summary.json`` (or ``{"error": ..., "exit_status": ...}`` on a named
failure).
"""

from __future__ import annotations

import io
import json

import numpy as np
from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from ..data.hamiltonian import HamiltonianData
from ..data.model import ModelData
from ..data.pseudo import GthPseudoData

__all__ = (
    'PREDICT_PARAMETERS',
    'NexthamPredictCalculation',
    'check_coverage',
    'kpath_from_kpoints',
    'structure_band_kpath',
    'validate_predict_parameters',
)

#: keys of the ``parameters`` input, with their meaning (all optional)
PREDICT_PARAMETERS: dict[str, str] = {
    'protocol': "protocol of the H0 build (meshes, cutoff): 'fast', 'balanced' (default), 'stringent'.",
    'basis': "GTH basis of H0 (default: the model's; another basis is refused by the coverage check).",
    'batch_size': 'structures per forward pass (default 8).',
    'edge_chunk': 'edges evaluated at once (memory bound for large cells; default: the engine’s).',
    'max_memory_mb': 'working-memory budget of the model, MB (sets the edge chunk when it is not given).',
    'bands': 'band structure along the k-path (default False; True when the `kpoints` input is given).',
    'dos': 'density of states on the k-mesh (default False).',
    'gap': 'Fermi level and gap on the k-mesh (default True).',
    'kpath': "'auto' (seekpath's path of each cell) or labels such as 'G-X-W-K-G-L' (default 'auto').",
    'npoints': 'number of k-points along the path (default 100).',
    'mesh': 'Monkhorst-Pack mesh [n1, n2, n3] of the Fermi level, gap and DOS (default: from each cell).',
    'device': "'auto' (CUDA when available, default), 'cpu' or 'cuda'.",
    'ghost_filter': 'spectra with the predicted correction H − H0 kept only along the directions of S(k) '
    'above this fraction of its largest eigenvalue, in [0, 1); 0 switches it off (default: the engine '
    'default, see `nextham predict --help`).',
}
_PROTOCOLS = ('fast', 'balanced', 'stringent')
_DEVICES = ('auto', 'cpu', 'cuda')
#: labels that would collide with a file the engine writes into the working directory
_RESERVED_LABELS = ('summary',)


# ---------------------------------------------------------------------------------------- validators
def _mesh_text(mesh) -> str:
    values = [
        int(n) for n in (mesh if isinstance(mesh, list | tuple) else str(mesh).replace('x', ' ').split())
    ]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f'mesh must be three positive integers, got {mesh!r}')
    return 'x'.join(str(n) for n in values)


def validate_predict_parameters(value: orm.Dict | None, _=None) -> str | None:
    """Port validator of ``parameters``: unknown keys and impossible values, by name."""
    if value is None:
        return None
    parameters = value.get_dict()
    unknown = sorted(set(parameters) - set(PREDICT_PARAMETERS))
    if unknown:
        return f'unknown parameters {unknown}; accepted: {sorted(PREDICT_PARAMETERS)}'
    if parameters.get('protocol', 'balanced') not in _PROTOCOLS:
        return f'protocol must be one of {_PROTOCOLS}, got {parameters["protocol"]!r}'
    if parameters.get('device', 'auto') not in _DEVICES:
        return f'device must be one of {_DEVICES}, got {parameters["device"]!r}'
    for key, low in (('batch_size', 1), ('edge_chunk', 2), ('npoints', 2)):
        if key in parameters:
            number = parameters[key]
            if isinstance(number, bool) or not isinstance(number, int) or number < low:
                return f'{key} must be an integer >= {low}, got {number!r}'
    number = parameters.get('max_memory_mb', 1.0)
    if isinstance(number, bool) or not isinstance(number, int | float) or not number > 0:
        return f'max_memory_mb must be a positive number, got {number!r}'
    number = parameters.get('ghost_filter', 0.0)
    if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number < 1:
        return f'ghost_filter must be a number in [0, 1), got {number!r}'
    for key in ('bands', 'dos', 'gap'):
        if key in parameters and not isinstance(parameters[key], bool):
            return f'{key} must be true or false, got {parameters[key]!r}'
    for key in ('kpath', 'basis'):
        if key in parameters and (not isinstance(parameters[key], str) or not parameters[key].strip()):
            return f'{key} must be a non-empty string, got {parameters[key]!r}'
    if 'mesh' in parameters:
        try:
            _mesh_text(parameters['mesh'])
        except (TypeError, ValueError) as exc:
            return str(exc)
    return None


def _validate_labels(namespace: dict, name: str) -> str | None:
    for label in namespace:
        if label in _RESERVED_LABELS:
            return f'`{name}.{label}`: the label {label!r} is reserved (the engine writes {label}.json)'
    return None


def _numbers_of(node) -> list[int]:
    """Atomic numbers of a StructureData or a HamiltonianData (from its attributes, no file read)."""
    from ase.data import atomic_numbers

    if isinstance(node, orm.StructureData):
        return [int(z) for z in node.get_ase().numbers]
    return [atomic_numbers[symbol] for symbol in node.base.attributes.get('elements', [])]


def check_coverage(model: ModelData, nodes: dict, namespace: str) -> str | None:
    """Message naming the element(s) of ``nodes`` outside the model coverage, or None.

    :param nodes: ``{label: StructureData | HamiltonianData}``.
    """
    from ..ml.inference import Coverage, CoverageError

    coverage = Coverage.from_metadata(model.metadata)
    for label, node in sorted(nodes.items()):
        try:
            coverage.check_elements(_numbers_of(node), f'{namespace}.{label}')
        except CoverageError as exc:
            return str(exc)
    return None


def _structure_arrays(node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(node, orm.StructureData):
        atoms = node.get_ase()
        return np.asarray(atoms.cell.array), np.asarray(atoms.positions), np.asarray(atoms.numbers)
    return node.get_structure_arrays()


def structure_band_kpath(node, path: str = 'auto', npoints: int = 100):
    """The engine's band path (:func:`~aiida_nextham.hamiltonian.kpath.band_path`) of a StructureData or
    HamiltonianData, in the reciprocal basis of its own cell (no standardisation)."""
    from ..hamiltonian.kpath import band_path

    lattice, positions, numbers = _structure_arrays(node)
    periodic = None if isinstance(node, orm.StructureData) else node.base.attributes.get('periodic', None)
    return band_path(
        lattice, path=path, npoints=npoints, positions=positions, numbers=numbers, periodic=periodic
    )


def kpath_from_kpoints(kpoints: orm.KpointsData, node=None) -> tuple[str, int]:
    """``(path, npoints)`` for ``nextham predict --kpath --npoints`` from an explicit, labelled path.

    Two labels on consecutive k-points start a new piece (``'U|K'``), as in seekpath and AiiDA paths, or
    are the ends of a segment of one interval (coarse paths): with ``node`` (the StructureData or
    HamiltonianData of the path), the reading whose engine path reproduces the k-points is returned;
    without it, the first reading that makes continuous pieces (breaks first).

    :raises ValueError: for a mesh or a path without labels.
    """
    try:
        points = kpoints.get_kpoints()
    except AttributeError:
        raise ValueError('kpoints must be an explicit path (set_kpoints with labels), not a mesh') from None
    labels = sorted((int(index), str(label)) for index, label in (kpoints.labels or []))
    if len(labels) < 2 or labels[0][0] != 0 or labels[-1][0] != len(points) - 1:
        raise ValueError('kpoints must be a labelled path whose first and last points carry labels')
    for (previous, _), (index, _) in zip(labels[:-1], labels[1:], strict=True):
        if index == previous:
            raise ValueError(f'two labels on k-point {index}')
    candidates = _path_readings(labels)
    if not candidates:
        raise ValueError(f'the labels {labels} do not describe a path of continuous pieces')
    if node is not None and len(candidates) > 1:
        same_points = []
        for path in candidates:
            try:
                engine = structure_band_kpath(node, path, len(points))
            except (ValueError, RuntimeError):
                continue
            if engine.kpoints.shape == np.shape(points) and np.abs(engine.kpoints - points).max() <= 1e-6:
                if sorted((int(i), str(label)) for i, label in engine.labels) == labels:
                    return path, len(points)
                same_points.append(path)
        if same_points:
            return same_points[0], len(points)
    return candidates[0], len(points)


def _path_readings(labels: list[tuple[int, str]], limit: int = 12) -> list[str]:
    """Path strings the labels can mean: each pair on consecutive k-points is a break or a short segment."""
    import itertools

    ambiguous = [i for i in range(1, len(labels)) if labels[i][0] == labels[i - 1][0] + 1]
    if len(ambiguous) <= limit:
        choices = itertools.product((True, False), repeat=len(ambiguous))
    else:  # too many to try: all breaks
        choices = [(True,) * len(ambiguous)]
    readings = []
    for choice in choices:
        breaks = {i for i, is_break in zip(ambiguous, choice, strict=True) if is_break}
        pieces = [[labels[0][1]]]
        for i in range(1, len(labels)):
            if i in breaks:
                pieces.append([labels[i][1]])
            else:
                pieces[-1].append(labels[i][1])
        if all(len(piece) >= 2 for piece in pieces):
            readings.append('|'.join('-'.join(piece) for piece in pieces))
    return readings


def _check_kpoints(kpoints: orm.KpointsData, node) -> str | None:
    """The engine must reproduce ``kpoints`` from its labels and length on the cell of ``node``."""
    try:
        path, npoints = kpath_from_kpoints(kpoints, node)
        engine = structure_band_kpath(node, path, npoints)
    except (ValueError, RuntimeError) as exc:
        return f'kpoints: {exc}'
    lattice = _structure_arrays(node)[0]
    try:
        cell = kpoints.cell
    except AttributeError:  # no cell set
        cell = None
    if cell is not None and not np.allclose(np.asarray(cell), lattice, atol=1e-6):
        return 'kpoints: the cell of the k-points is not the cell of the structure'
    deviation = float(np.abs(np.asarray(kpoints.get_kpoints()) - engine.kpoints).max())
    if deviation > 1e-6:
        return (
            f'kpoints: the engine’s path {path!r} with {npoints} points differs from the given k-points '
            f'(largest deviation {deviation:.2g} in fractional coordinates); build the path with '
            '`structure_band_kpath` or the `seekpath_band_path` calcfunction'
        )
    return None


def _validate_inputs(inputs: dict, _=None) -> str | None:
    """Structures and/or H0, every element inside the model coverage, pseudopotentials for the H0 build."""
    from .dft import check_structure

    structures = dict(inputs.get('structures', {}) or {})
    h0 = dict(inputs.get('h0', {}) or {})
    pseudos = dict(inputs.get('pseudos', {}) or {})
    model = inputs.get('model')
    if not structures and not h0:
        return 'give `structures` (H0 built by the engine), `h0` (HamiltonianData with H0), or both'
    if structures and h0 and set(structures) != set(h0):
        return f'`structures` and `h0` must have the same labels, got {sorted(structures)} and {sorted(h0)}'
    for namespace, nodes in (('structures', structures), ('h0', h0)):
        message = _validate_labels(nodes, namespace)
        if message:
            return message
    if model is not None:
        message = check_coverage(model, structures or h0, 'structures' if structures else 'h0')
        if message:
            return message
    for label, structure in sorted(structures.items()):
        problem = check_structure(structure)
        if problem is not None:
            return f'structures.{label}: {problem[1]}'
    for label, node in sorted(h0.items()):
        attributes = node.base.attributes
        if not attributes.get('has_h0', False) and attributes.get('mode', None) != 'h0':
            return (
                f'h0.{label}: the HamiltonianData holds no H0 blocks (DFT labels or `nextham dft --mode h0`)'
            )
        if label in structures:
            lattice, positions, numbers = node.get_structure_arrays()
            atoms = structures[label].get_ase()
            same = (
                len(atoms) == len(numbers)
                and np.array_equal(atoms.numbers, numbers)
                and np.allclose(atoms.cell.array, lattice, atol=1e-4)
                and np.allclose(atoms.positions, positions, atol=1e-4)
            )
            if not same:
                return f'h0.{label} does not describe structures.{label} (species, cell or positions differ)'
    if h0 and pseudos:
        return '`pseudos` are used only to build H0; with `h0` inputs nothing is built: remove them'
    if structures and not h0:
        elements = sorted({kind.symbol for structure in structures.values() for kind in structure.kinds})
        missing = sorted(set(elements) - set(pseudos))
        if missing:
            return (
                f'no pseudopotential for the element(s) {missing}: '
                'give `pseudos` (e.g. from a GthPseudoFamily)'
            )
        for symbol, pseudo in pseudos.items():
            if pseudo.element != symbol:
                return f'`pseudos.{symbol}` is a pseudopotential of {pseudo.element}'
        if model is not None:
            xc = str((model.base.attributes.get('dft', {}) or {}).get('xc') or '').lower()
            for symbol in elements:
                functional = (pseudos[symbol].functional or '').lower()
                if xc and functional and functional != xc:
                    return (
                        f'the pseudopotential of {symbol} is for {pseudos[symbol].functional}, but the model '
                        f'was trained on H0 with xc={xc}'
                    )
    kpoints = inputs.get('kpoints')
    if kpoints is not None:
        nodes = structures or h0
        if len(nodes) != 1:
            return '`kpoints` describe the path of one cell: give exactly one structure (or h0) with them'
        parameters = inputs['parameters'].get_dict() if 'parameters' in inputs else {}
        clash = sorted({'kpath', 'npoints'} & set(parameters))
        if clash or parameters.get('bands') is False:
            return (
                f'the `kpoints` input sets the path: remove {clash or ["bands: false"]} from the parameters'
            )
        return _check_kpoints(kpoints, next(iter(nodes.values())))
    return None


# ------------------------------------------------------------------------------------------ CalcJob
class NexthamPredictCalculation(CalcJob):
    """Predicted Hamiltonians (H = H0 + ΔH), band structures, DOS, Fermi levels and gaps from a model."""

    _MODEL_FOLDER = 'model'
    _STRUCTURE_FOLDER = 'structures'
    _H0_FOLDER = 'h0'
    _PSEUDO_FOLDER = 'pseudo'
    _PSEUDO_FILE = 'pseudo/gth.dat'
    _SUMMARY_FILE = 'summary.json'
    _STDOUT_FILE = 'nextham.out'
    _STDERR_FILE = 'nextham.err'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'model', valid_type=ModelData, help='The trained model (safetensors weights + JSON config).'
        )
        spec.input_namespace(
            'structures',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Crystals whose H0 the engine builds (with the basis, pseudopotentials and functional of '
            "the model's training data); the labels name the outputs.",
        )
        spec.input_namespace(
            'h0',
            valid_type=HamiltonianData,
            dynamic=True,
            required=False,
            help='Block Hamiltonians with H0 and S (e.g. DFT labels): prediction without any DFT. With '
            '`structures`, the same labels, describing the same cells.',
        )
        spec.input_namespace(
            'pseudos',
            valid_type=GthPseudoData,
            dynamic=True,
            required=False,
            help='A GTH pseudopotential for every element of `structures` (keyed by element symbol), used '
            'to build H0.',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            validator=validate_predict_parameters,
            help='Prediction settings: ' + '; '.join(f'{k}: {v}' for k, v in PREDICT_PARAMETERS.items()),
        )
        spec.input(
            'kpoints',
            valid_type=orm.KpointsData,
            required=False,
            help='Band path of the single structure (explicit, labelled, in its own cell), e.g. from the '
            '`seekpath_band_path` calcfunction; turns the band structure on.',
        )
        spec.inputs.validator = _validate_inputs

        spec.inputs['metadata']['options']['resources'].default = lambda: {
            'num_machines': 1,
            'num_mpiprocs_per_machine': 1,
        }
        spec.inputs['metadata']['options']['withmpi'].default = False
        spec.inputs['metadata']['options']['parser_name'].default = 'nextham.predict'
        spec.inputs['metadata']['options']['output_filename'].default = cls._STDOUT_FILE

        spec.output_namespace(
            'hamiltonians',
            valid_type=HamiltonianData,
            dynamic=True,
            required=False,
            help='Predicted block Hamiltonian of every structure (H predicted; H0 and S kept).',
        )
        spec.output_namespace(
            'bands',
            valid_type=orm.BandsData,
            dynamic=True,
            required=False,
            help='Band structure of every structure along its path (eV, not shifted).',
        )
        spec.output_namespace(
            'dos',
            valid_type=orm.XyData,
            dynamic=True,
            required=False,
            help='Density of states of every structure (states/eV/cell against eV, not shifted).',
        )
        spec.output(
            'results',
            valid_type=orm.Dict,
            help='Fermi levels, gaps, electron counts, timings per structure; the model digest and the '
            'H0 settings (with a single structure also its fermi_level, gap, vbm, cbm at the top level).',
        )
        spec.default_output_node = 'results'

        spec.exit_code(
            300, 'ERROR_OUTPUT_FILES_MISSING', message='output file(s) {filenames} missing: {message}'
        )
        spec.exit_code(
            301, 'ERROR_OUTPUT_SUMMARY_UNREADABLE', message='the summary JSON is unreadable: {message}'
        )
        spec.exit_code(
            302,
            'ERROR_OUTPUT_HAMILTONIAN_UNREADABLE',
            message='a predicted Hamiltonian file is unreadable: {message}',
        )
        spec.exit_code(
            303, 'ERROR_OUTPUT_SPECTRA_UNREADABLE', message='a bands or DOS file is unreadable: {message}'
        )
        spec.exit_code(
            304,
            'ERROR_KPOINTS_MISMATCH',
            message='the engine computed the bands at other k-points than the `kpoints` input: {message}',
        )
        spec.exit_code(
            305, 'ERROR_ENGINE_FAILED', message='the engine failed with an unclassified error: {message}'
        )
        spec.exit_code(
            306, 'ERROR_UNEXPECTED_PARSER_EXCEPTION', message='the parser raised an exception: {message}'
        )
        spec.exit_code(401, 'ERROR_MODEL_COVERAGE', message='outside the model coverage: {message}')
        spec.exit_code(402, 'ERROR_MODEL_INVALID', message='the model files are invalid: {message}')
        spec.exit_code(403, 'ERROR_H0_INVALID', message='an H0 input is invalid: {message}')
        spec.exit_code(410, 'ERROR_H0_FAILED', message='the DFT engine failed to build H0: {message}')
        spec.exit_code(
            411, 'ERROR_INVALID_CONFIG', message='the engine rejected its H0 configuration: {message}'
        )
        spec.exit_code(
            412, 'ERROR_UNSUPPORTED_ELEMENT_OR_BASIS', message='unsupported element or basis: {message}'
        )
        spec.exit_code(413, 'ERROR_BAD_STRUCTURE', message='bad structure: {message}')

    # ---------------------------------------------------------------------------------- helpers
    @property
    def _builds_h0(self) -> bool:
        """H0 is built by the engine (structures without h0)."""
        return bool(self.inputs.get('structures')) and not self.inputs.get('h0')

    def _labels(self) -> list[str]:
        """Labels of the predicted structures, in the order they are passed to the engine."""
        return sorted(self.inputs.get('structures') or self.inputs.get('h0'))

    def _parameters(self) -> dict:
        return self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}

    def _cmdline(self) -> list[str]:
        parameters = self._parameters()
        labels = self._labels()
        params = ['predict', self._MODEL_FOLDER]
        if self.inputs.get('structures'):
            params += [f'{self._STRUCTURE_FOLDER}/{label}.xyz' for label in labels]
        for label in labels if self.inputs.get('h0') else ():
            params += ['--h0', f'{self._H0_FOLDER}/{label}.h5']
        params += ['-o', '.']
        if self._builds_h0:
            params += ['--protocol', parameters.get('protocol', 'balanced')]
            if parameters.get('basis'):
                params += ['--basis', parameters['basis']]
        for key, option in (('batch_size', '--batch-size'), ('edge_chunk', '--edge-chunk')):
            if key in parameters:
                params += [option, str(int(parameters[key]))]
        if 'max_memory_mb' in parameters:
            params += ['--max-memory-mb', repr(float(parameters['max_memory_mb']))]
        if 'kpoints' in self.inputs:
            nodes = self.inputs.get('structures') or self.inputs.get('h0')
            path, npoints = kpath_from_kpoints(self.inputs.kpoints, next(iter(nodes.values())))
            params += ['--bands', '--kpath', path, '--npoints', str(npoints)]
        elif parameters.get('bands', False):
            params += ['--bands', '--kpath', parameters.get('kpath', 'auto')]
            params += ['--npoints', str(int(parameters.get('npoints', 100)))]
        if parameters.get('dos', False):
            params += ['--dos']
        if parameters.get('gap', True):
            params += ['--gap']
        if 'mesh' in parameters:
            params += ['--mesh', _mesh_text(parameters['mesh'])]
        if 'ghost_filter' in parameters:
            params += ['--ghost-filter', repr(float(parameters['ghost_filter']))]
        params += ['--device', parameters.get('device', 'auto')]
        return params

    def _model_metadata_text(self) -> str:
        """``model.json`` as written into the working directory (see the module docstring)."""
        from ..ml.serialization import METADATA

        text = self.inputs.model.base.repository.get_object_content(METADATA)
        if not self._builds_h0:
            return text
        metadata = json.loads(text)
        provenance = metadata.setdefault('provenance', {})
        engine = provenance.get('dft') or provenance.get('label_engine') or {}
        provenance['dft'] = {**engine, 'pseudo': self._PSEUDO_FILE}
        provenance.pop('label_engine', None)
        return json.dumps(metadata, indent=1)

    def prepare_for_submission(self, folder):
        from ase.io import write

        from ..ml.serialization import METADATA, WEIGHTS

        folder.get_subfolder(self._MODEL_FOLDER, create=True)
        with self.inputs.model.base.repository.open(WEIGHTS, 'rb') as source:
            folder.create_file_from_filelike(source, f'{self._MODEL_FOLDER}/{WEIGHTS}', mode='wb')
        with folder.open(f'{self._MODEL_FOLDER}/{METADATA}', 'w') as target:
            target.write(self._model_metadata_text())

        structures = self.inputs.get('structures') or {}
        if structures:
            folder.get_subfolder(self._STRUCTURE_FOLDER, create=True)
        for label, structure in sorted(structures.items()):
            handle = io.StringIO()
            write(handle, structure.get_ase(), format='extxyz')
            with folder.open(f'{self._STRUCTURE_FOLDER}/{label}.xyz', 'w') as target:
                target.write(handle.getvalue())

        h0 = self.inputs.get('h0') or {}
        if h0:
            folder.get_subfolder(self._H0_FOLDER, create=True)
        for label, node in sorted(h0.items()):
            with node.base.repository.open(node.filename, 'rb') as source:
                folder.create_file_from_filelike(source, f'{self._H0_FOLDER}/{label}.h5', mode='wb')

        if self._builds_h0:
            folder.get_subfolder(self._PSEUDO_FOLDER, create=True)
            blocks = [
                pseudo.get_content().rstrip('\n') + '\n' for _, pseudo in sorted(self.inputs.pseudos.items())
            ]
            with folder.open(self._PSEUDO_FILE, 'w') as target:
                target.write(''.join(blocks))

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = self._cmdline()
        codeinfo.stdout_name = self._STDOUT_FILE
        codeinfo.stderr_name = self._STDERR_FILE
        codeinfo.withmpi = self.inputs.metadata.options.withmpi

        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [self._SUMMARY_FILE, self._STDOUT_FILE, self._STDERR_FILE]
        for label in self._labels():
            calcinfo.retrieve_list += [
                f'{label}.json',
                f'{label}.bands.json',
                f'{label}.bands.png',
                f'{label}.dos.json',
                f'{label}.dos.png',
            ]
        # the predicted Hamiltonians are stored once, as HamiltonianData, not also in the retrieved folder
        calcinfo.retrieve_temporary_list = [f'{label}.h5' for label in self._labels()]
        return calcinfo
