"""``nextham predict``: structures -> H0 (PySCF, ``'h0'`` mode) -> model -> H, bands, DOS, gap.

For every structure (any file ASE reads) the command builds H0 and S with the label engine, using the
basis, pseudopotentials, functional and initial guess the model was trained with (from the model's
provenance; the protocol's otherwise) and the protocol's cutoff and meshes; or it reads H0 and S
from ``--h0`` files. The model predicts H = H0 + ΔH in batches of small structures, large ones in
memory-bounded edge chunks. Written to ``OUTDIR``, per structure ``NAME``:

- ``NAME.h5``: block Hamiltonian (H predicted, H0 and S kept), nextham HDF5;
- ``--bands``: ``NAME.bands.json`` and ``NAME.bands.png`` along the seekpath path;
- ``--dos``: ``NAME.dos.json`` and ``NAME.dos.png``;
- with any of ``--bands``, ``--dos``, ``--gap``: Fermi level (electron count of H0, k-mesh) and gap;
- ``NAME.json``: the structure's summary; ``summary.json``: the summary of the run (also on stdout).

Exit codes: :data:`EXIT_SUCCESS`, :data:`EXIT_MODEL_INVALID` (not a safetensors + JSON model
folder), :data:`EXIT_COVERAGE` (element or basis outside the model's coverage),
:data:`EXIT_H0_INVALID` (an ``--h0`` file is unreadable, has no H0, does not match its structure or
is cut off below the model's cutoff), and the engine's own statuses for H0 failures (20-25,
:mod:`aiida_nextham.dft.errors`). On a failure the JSON on stdout holds ``error``, ``error_class``,
``exit_status``, ``message`` and the structures finished before it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from ..dft.errors import DftConfigError, DftError

__all__ = [
    'DEFAULT_EDGE_CHUNK',
    'EXIT_COVERAGE',
    'EXIT_H0_INVALID',
    'EXIT_MODEL_INVALID',
    'EXIT_SUCCESS',
    'predict',
]

EXIT_SUCCESS = 0
#: the model path is not a folder with ``model.safetensors`` + ``model.json`` of this format
EXIT_MODEL_INVALID = 30
#: a structure has an element or a basis outside the model's coverage
EXIT_COVERAGE = 31
#: an ``--h0`` file is unreadable, has no H0, does not match its structure or lacks blocks
EXIT_H0_INVALID = 32

#: edges evaluated at once by default (about 70 MB of working memory for the small preset in float32)
DEFAULT_EDGE_CHUNK = 4096
#: larger cells are not diagonalised densely for the Fermi level, gap, bands and DOS
MAX_DENSE_STATES = 6000
DOS_WIDTH = 0.1  # eV, Gaussian smearing of the DOS
DOS_STEP = 0.01  # eV
#: default relative S(k) threshold of the ghost filter (chosen on Si validation cells: docs/benchmarks.md)
GHOST_FILTER = 1e-4


class PredictFailure(click.ClickException):
    """A named failure: one ``Error:`` line and its exit status."""

    def __init__(self, error: str, message: str, exit_status: int):
        super().__init__(f'{error}: {" ".join(str(message).split())}')
        self.error, self.exit_code = error, exit_status

    def as_dict(self) -> dict:
        return {
            'error': self.error,
            'error_class': type(self).__name__,
            'exit_status': self.exit_code,
            'message': self.message,
        }


# ------------------------------------------------------------------------------------------- inputs
def _unique_names(paths: list[Path]) -> list[str]:
    """File stems, made unique with a numeric suffix where two inputs share one."""
    names, seen = [], {}
    for path in paths:
        stem = path.name.split('.')[0] or 'structure'
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f'{stem}_{seen[stem] - 1}')
    return names


def _read_h0(path: Path):
    from ..hamiltonian.block import HamiltonianError
    from ..hamiltonian.hdf5 import read_hdf5

    try:
        bh = read_hdf5(path)
    except (HamiltonianError, OSError) as exc:
        raise PredictFailure('H0FileInvalid', str(exc), EXIT_H0_INVALID) from None
    if bh.h0 is None:
        metadata = bh.metadata or {}
        if metadata.get('mode') == 'h0' or (metadata.get('matrices') or {}).get('hamiltonian') == 'H0':
            bh = bh.replace(h0=bh.hamiltonian)
        else:
            raise PredictFailure('H0FileInvalid', f'{path}: the file holds no H0 blocks', EXIT_H0_INVALID)
    return bh


def _check_same_structure(atoms, bh, structure: Path, h0_file: Path, tolerance: float = 1e-4) -> None:
    """The H0 file must describe ``atoms``: same species in the same order, same cell and positions."""
    same = (
        len(atoms) == bh.n_atoms
        and np.array_equal(atoms.numbers, bh.numbers)
        and np.allclose(atoms.cell.array, bh.lattice, atol=tolerance)
        and np.allclose(atoms.positions, bh.positions, atol=tolerance)
    )
    if not same:
        raise PredictFailure(
            'H0FileInvalid',
            f'{h0_file} does not describe the structure in {structure} (species, cell or positions differ)',
            EXIT_H0_INVALID,
        )


def _dft_config(protocol: str, coverage, basis: str | None, model_cutoff: float, selfcheck: bool = False):
    """The engine settings: the protocol, the model's training H0 settings, then ``--basis``.

    The self-check of the stored H0 blocks is off unless asked for: the model reads blocks only up to
    its own cutoff, and the check's off-mesh k-points cost ~40 % of the H0 build.
    """
    from ..dft import get_protocol

    overrides = {k: v for k, v in coverage.dft.items() if k in ('basis', 'pseudo', 'xc', 'init_guess')}
    if basis is not None:
        overrides['basis'] = basis
    config = get_protocol(protocol, overrides).replace(selfcheck=selfcheck)
    if config.cutoff < model_cutoff:
        raise DftConfigError(
            f'the {protocol} protocol stores blocks up to {config.cutoff:g} Å, less than the model cutoff '
            f'{model_cutoff:g} Å; use a protocol with a larger cutoff'
        )
    return config


def _precheck(atoms, config, coverage, label: str) -> None:
    """Elements and basis against the model before any integral (builds the PySCF cell only)."""
    from ..dft import pyscf_engine as engine
    from ..dft.checks import check_elements, check_structure
    from ..dft.orbitals import basis_from_cell

    coverage.check_elements(atoms.numbers, label)
    check_structure(atoms)
    check_elements(atoms.get_chemical_symbols(), config.basis, config.pseudo)
    basis = basis_from_cell(engine.build_cell(atoms, config), config.basis)
    settings = {'pseudo': config.pseudo, 'xc': config.xc, 'init_guess': config.init_guess}
    coverage.check_basis(basis, atoms.numbers, label, settings)


# ---------------------------------------------------------------------------------------- spectra
def _spectra(bh, name: str, outdir: Path, options: dict) -> tuple[dict, dict]:
    """Fermi level, gap and optionally bands and DOS of a predicted Hamiltonian: (summary, files)."""
    from ..hamiltonian.kpath import band_path
    from ..hamiltonian.spectra import band_energies, band_gap, density_of_states
    from .cli import atomic_output, plot_window, resolve_fermi_level, spin_degeneracy, write_json

    if bh.n_states > MAX_DENSE_STATES:
        return {'spectra': f'skipped: {bh.n_states} states is beyond dense diagonalisation'}, {}
    if bh.n_electrons is None:
        return {'spectra': 'skipped: the electron count is unknown'}, {}
    files: dict[str, str] = {}
    ghost_filter = options['ghost_filter'] if bh.h0 is not None else None
    fermi = resolve_fermi_level(bh, mesh=options['mesh'], ghost_filter=ghost_filter)
    level = fermi['fermi_level']
    summary = {
        'fermi_level': level,
        'n_electrons': fermi['n_electrons'],
        'mesh': fermi['mesh'],
        'ghost_filter': ghost_filter,
    }
    energies = [fermi['energies']]
    if options['bands']:
        kpath = band_path(
            bh.lattice,
            path=options['kpath'],
            npoints=options['npoints'],
            positions=bh.positions,
            numbers=bh.numbers,
            periodic=bh.periodic,
        )
        path_energies = band_energies(bh, kpath.kpoints, ghost_filter=ghost_filter)
        energies.append(path_energies)
        from ..hamiltonian.plotting import plot_bands

        png, data = outdir / f'{name}.bands.png', outdir / f'{name}.bands.json'
        with atomic_output(png) as tmp:
            low, high = plot_window(level, None, None)
            plot_bands(
                kpath, path_energies, level, tmp, title=f'{bh.formula} (predicted)', emin=low, emax=high
            )
        write_json(
            {
                'formula': bh.formula,
                'units': 'eV',
                'kpoints': np.asarray(kpath.kpoints, dtype=float),
                'distances': np.asarray(kpath.distances, dtype=float),
                'labels': [[int(index), str(label)] for index, label in kpath.labels],
                'energies': path_energies,
                'fermi_level': level,
            },
            data,
        )
        files.update(bands=str(data), bands_plot=str(png))
    try:
        gap = band_gap(np.concatenate(energies), fermi['n_electrons'], spin_degeneracy(bh))
        summary['gap'] = {k: gap[k] for k in ('gap', 'vbm', 'cbm', 'direct_gap', 'is_metal')}
    except ValueError as exc:
        summary['gap'] = {'gap': None, 'problem': str(exc)}
    if options['dos']:
        from ..hamiltonian.plotting import plot_dos

        grid = np.arange(fermi['energies'].min() - 1.0, fermi['energies'].max() + 1.0, DOS_STEP)
        dos = density_of_states(
            fermi['energies'], fermi['weights'], grid, width=DOS_WIDTH, spin_degeneracy=spin_degeneracy(bh)
        )
        png, data = outdir / f'{name}.dos.png', outdir / f'{name}.dos.json'
        with atomic_output(png) as tmp:
            plot_dos(grid, dos, level, tmp, title=f'{bh.formula} (predicted)', emin=-5.0, emax=5.0)
        write_json(
            {
                'formula': bh.formula,
                'units': {'energy': 'eV', 'dos': 'states/eV/cell'},
                'energies': grid,
                'dos': dos,
                'smearing': 'gaussian',
                'width': DOS_WIDTH,
                'mesh': fermi['mesh'],
                'fermi_level': level,
            },
            data,
        )
        files.update(dos=str(data), dos_plot=str(png))
    return summary, files


# --------------------------------------------------------------------------------------------- output
def _emit(data: dict, outdir: Path | None, summary: Path | None) -> None:
    from .cli import write_json
    from .dft_command import _json_default

    click.echo(json.dumps(data, indent=1, default=_json_default))
    for path in (outdir / 'summary.json' if outdir is not None and outdir.is_dir() else None, summary):
        if path is not None:
            write_json(data, path)


def _model_info(model_path: Path, metadata: dict, model) -> dict:
    from ..ml.inference import weights_digest

    return {
        'path': str(model_path.resolve()),
        'weights_sha256': weights_digest(model_path),
        'architecture': metadata.get('architecture'),
        'n_parameters': model.n_parameters,
        'cutoff': float(model.config.cutoff),
        'elements': list(model.orbital_irreps.elements),
        'dtype': metadata.get('dtype'),
    }


def _device(name: str) -> str:
    import torch

    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise click.BadParameter('CUDA is not available on this machine', param_hint='--device')
    return name


# -------------------------------------------------------------------------------------------- command
@click.command('predict')
@click.argument('model', type=click.Path(exists=True, path_type=Path))
@click.argument('structures', nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    '-o', '--outdir', type=click.Path(file_okay=False, path_type=Path), default=Path('.'), show_default=True
)
@click.option(
    '--protocol',
    type=click.Choice(['fast', 'balanced', 'stringent']),
    default='balanced',
    show_default=True,
    help="Engine protocol for H0 (meshes, cutoff); basis/pseudo/xc follow the model's training data.",
)
@click.option('--basis', default=None, help="Override the GTH basis of H0 (default: the model's).")
@click.option(
    '--selfcheck/--no-selfcheck',
    default=False,
    show_default=True,
    help="Check the built H0 blocks' bands against PySCF's at off-mesh k-points (as `nextham dft` does).",
)
@click.option(
    '--h0',
    'h0_files',
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Block-Hamiltonian file with H0 and S (repeatable; one per STRUCTURE, or instead of them).',
)
@click.option('--batch-size', type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    '--edge-chunk',
    type=click.IntRange(min=2),
    default=None,
    help=f'Edges evaluated at once (default {DEFAULT_EDGE_CHUNK}, or from --max-memory-mb).',
)
@click.option('--max-memory-mb', type=click.FloatRange(min=1), default=None, help='Model working memory.')
@click.option('--bands', is_flag=True, help='Band structure along the k-path (JSON + PNG).')
@click.option('--dos', is_flag=True, help='Density of states on the k-mesh (JSON + PNG).')
@click.option('--gap', is_flag=True, help='Fermi level and gap only.')
@click.option(
    '--kpath', default='auto', show_default=True, help="'auto' (seekpath) or labels, e.g. G-X-W-L-G."
)
@click.option('--npoints', type=click.IntRange(min=2), default=100, show_default=True)
@click.option('--mesh', default=None, metavar='N1xN2xN3', help='k-mesh of the Fermi level and DOS.')
@click.option(
    '--ghost-filter',
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=GHOST_FILTER,
    show_default=True,
    help='Spectra with the predicted correction H − H0 kept only along the directions of S(k) above this '
    'fraction of its largest eigenvalue (H0 alone acts along the rest): in nearly dependent bases '
    '(gth-dzvp, long cutoffs) sub-meV errors along them become ghost bands. 0 switches it off; '
    'without H0 it is off. See docs/benchmarks.md.',
)
@click.option('--device', type=click.Choice(['auto', 'cpu', 'cuda']), default='auto', show_default=True)
@click.option('--structure-format', default=None, help='ASE format of STRUCTURES (default: guessed).')
@click.option('--summary', type=click.Path(path_type=Path), default=None, help='Also write the summary here.')
def predict(
    model: Path,
    structures: tuple[Path, ...],
    outdir: Path,
    protocol: str,
    basis: str | None,
    selfcheck: bool,
    h0_files: tuple[Path, ...],
    batch_size: int,
    edge_chunk: int | None,
    max_memory_mb: float | None,
    bands: bool,
    dos: bool,
    gap: bool,
    kpath: str,
    npoints: int,
    mesh: str | None,
    ghost_filter: float,
    device: str,
    structure_format: str | None,
    summary: Path | None,
) -> None:
    """Predict the Hamiltonian of STRUCTURES (files ASE reads) with the model in folder MODEL."""
    from .cli import check_destination, parse_mesh

    if not structures and not h0_files:
        raise click.UsageError('give STRUCTURES, --h0 files, or both (one H0 file per structure)')
    if structures and h0_files and len(structures) != len(h0_files):
        raise click.UsageError(f'{len(structures)} structures but {len(h0_files)} --h0 files')
    if summary is not None:
        check_destination(summary)
    outdir.mkdir(parents=True, exist_ok=True)
    options = {
        'bands': bands,
        'dos': dos,
        'kpath': kpath,
        'npoints': npoints,
        'mesh': parse_mesh(mesh),
        'ghost_filter': ghost_filter or None,
        'selfcheck': selfcheck,
    }
    inputs = list(structures or h0_files)
    report: dict = {'model': str(model), 'protocol': protocol, 'outdir': str(outdir), 'structures': []}
    start = time.perf_counter()
    try:
        _run(
            model, inputs, structures, h0_files, outdir, protocol, basis, options, report,
            batch_size=batch_size, edge_chunk=edge_chunk, max_memory_mb=max_memory_mb,
            spectra=bands or dos or gap, device=device, structure_format=structure_format,
        )  # fmt: skip
    except PredictFailure as failure:
        _emit({**report, **failure.as_dict()}, outdir, summary)
        raise
    except DftError as error:
        _emit({**report, **error.as_dict()}, outdir, summary)
        raise PredictFailure(error.code, f'{type(error).__name__}: {error}', error.exit_status) from None
    report['timings'] = {'total': round(time.perf_counter() - start, 3)}
    _emit(report, outdir, summary)
    click.echo(f'Wrote {len(report["structures"])} predicted Hamiltonian(s) to {outdir}', err=True)


def _run(model_path, inputs, structures, h0_files, outdir, protocol, basis, options, report, **kw) -> None:
    from ..dft import run_engine  # PySCF's native libraries before torch's (see dft.pyscf_engine)
    from ..hamiltonian.hdf5 import write_hdf5
    from ..ml.graph import GraphError
    from ..ml.inference import (
        Coverage,
        CoverageError,
        InferenceStats,
        load_inference_model,
        predict_structures,
    )
    from ..ml.serialization import ModelFileError
    from .cli import write_json
    from .dft_command import _read_structure

    try:
        model, metadata = load_inference_model(model_path, device=_device(kw['device']))
    except ModelFileError as exc:
        raise PredictFailure('ModelFileInvalid', str(exc), EXIT_MODEL_INVALID) from None
    coverage = Coverage.from_metadata(metadata)
    report['model'] = _model_info(model_path, metadata, model)
    report['coverage'] = coverage.describe()
    cutoff = model.config.cutoff
    config = None if h0_files else _dft_config(protocol, coverage, basis, cutoff, options['selfcheck'])
    if config is None:
        report['protocol'] = None
    else:
        report['dft'] = {
            'basis': config.basis,
            'pseudo': config.pseudo,
            'xc': config.xc,
            'cutoff': config.cutoff,
            'selfcheck': config.selfcheck,
        }
    names = _unique_names(inputs)
    atoms_list = [_read_structure(path, kw['structure_format']) for path in structures]
    try:
        for atoms, path in zip(atoms_list, structures, strict=True):  # every structure before any DFT
            if config is not None:
                _precheck(atoms, config, coverage, str(path))
            else:
                coverage.check_elements(atoms.numbers, str(path))
    except CoverageError as exc:
        raise PredictFailure('CoverageMismatch', str(exc), EXIT_COVERAGE) from None
    edge_chunk = kw['edge_chunk'] or (None if kw['max_memory_mb'] else DEFAULT_EDGE_CHUNK)
    stats = InferenceStats()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(inputs), desc='predict', unit='structure', file=sys.stderr,
               disable=None if len(inputs) > 1 else True)  # fmt: skip
    with bar:
        for first in range(0, len(inputs), kw['batch_size']):
            group = range(first, min(first + kw['batch_size'], len(inputs)))
            items, entries = [], []
            for k in group:
                t0 = time.perf_counter()
                if h0_files:
                    bh = _read_h0(h0_files[k])
                    if structures:
                        _check_same_structure(atoms_list[k], bh, structures[k], h0_files[k])
                    source = {'h0_source': 'file', 'h0_file': str(h0_files[k])}
                else:
                    bh = run_engine(atoms_list[k], config, 'h0').hamiltonian
                    source = {'h0_source': 'pyscf'}
                items.append(bh)
                entries.append(
                    {
                        'structure': str(inputs[k]),
                        'name': names[k],
                        'formula': bh.formula,
                        'n_atoms': bh.n_atoms,
                        'n_orbitals': bh.n_orbitals,
                        'n_pairs': bh.n_pairs,
                        **source,
                        'timings': {'h0': round(time.perf_counter() - t0, 3)},
                    }
                )
            batch_stats = InferenceStats()
            t0 = time.perf_counter()
            try:
                predicted = predict_structures(
                    model,
                    items,
                    batch_size=kw['batch_size'],
                    edge_chunk_size=edge_chunk,
                    max_memory_mb=kw['max_memory_mb'],
                    coverage=coverage,
                    labels=[str(inputs[k]) for k in group],
                    model_info=report['model'],
                    stats=batch_stats,
                )
            except CoverageError as exc:
                raise PredictFailure('CoverageMismatch', str(exc), EXIT_COVERAGE) from None
            except GraphError as exc:
                raise PredictFailure('H0FileInvalid', str(exc), EXIT_H0_INVALID) from None
            elapsed = time.perf_counter() - t0
            _merge(stats, batch_stats)
            edges = [max(bh.n_pairs - bh.n_atoms, 1) for bh in items]
            for bh, entry, n in zip(predicted, entries, edges, strict=True):
                entry['timings']['inference'] = round(elapsed * n / sum(edges), 3)
                t0 = time.perf_counter()
                output = outdir / f'{entry["name"]}.h5'
                files = {'hamiltonian': str(output)}
                result = {'fermi_level': None, 'gap': None}
                if kw['spectra']:
                    spectra, more = _spectra(bh, entry['name'], outdir, options)
                    result.update(spectra)
                    files.update(more)
                    bh.fermi_level = result.get('fermi_level')
                entry['timings']['spectra'] = round(time.perf_counter() - t0, 3)
                write_hdf5(bh, output)
                entry.update(result, outputs=files)
                write_json(entry, outdir / f'{entry["name"]}.json')
                report['structures'].append(entry)
                bar.update(1)
    report['inference'] = stats.as_dict()


def _merge(total, part) -> None:
    """Accumulate one batch's :class:`InferenceStats` into the run's."""
    for key, value in part.times.items():
        total.times[key] = total.times.get(key, 0.0) + value
    for key in ('n_structures', 'n_batches', 'n_chunked', 'n_chunks', 'n_edges'):
        setattr(total, key, getattr(total, key) + getattr(part, key))
    total.edge_chunk_size = part.edge_chunk_size
    peak = max(total.memory.get('peak_rss_mb') or 0.0, part.memory.get('peak_rss_mb') or 0.0)
    total.memory = {**part.memory, 'peak_rss_mb': peak}


if __name__ == '__main__':  # pragma: no cover
    predict.main(args=sys.argv[1:], prog_name='nextham predict')
