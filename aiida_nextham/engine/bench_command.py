"""``nextham bench``: reproducible benchmarks that print a table and write JSON.

``nextham bench accuracy TEST.h5... --model DIR [--model DIR ...]`` compares H0 alone and every model
against the DFT labels of the test files (MAE of H raw and after μS, band error around E_F, gap
error, ghost bands).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click

__all__ = ['bench']


@click.group('bench')
def bench():
    """Benchmarks: accuracy against DFT labels (and, with `nextham predict`, speed)."""


@bench.command('accuracy')
@click.argument(
    'test_files', nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    '--model',
    'models',
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help='Model folder to evaluate (repeat for several, e.g. NextHAM and structure-only).',
)
@click.option(
    '--window',
    nargs=2,
    type=float,
    default=(-2.0, 2.0),
    show_default=True,
    help='Energy window around E_F of the band error and ghost count, eV.',
)
@click.option(
    '--kdensity',
    type=float,
    default=20.0,
    show_default=True,
    help='k-points per Å⁻¹ of the evaluation mesh (Γ-centred).',
)
@click.option('--ghost-tolerance', type=float, default=0.1, show_default=True, help='eV.')
@click.option(
    '--ghost-filter',
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=None,
    help='Predicted bands with the correction H − H0 kept only along directions of S(k) above this '
    'fraction of its largest eigenvalue (as `nextham predict --ghost-filter`); true bands: full basis.',
)
@click.option('-o', '--output', type=click.Path(dir_okay=False, path_type=Path), help='Write the JSON here.')
def accuracy(test_files, models, window, kdensity, ghost_tolerance, ghost_filter, output):
    """Accuracy of H0 and of MODELs on the labelled TEST_FILES."""
    from ..hamiltonian.hdf5 import read_hdf5
    from ..ml.predictor import predict_hamiltonian
    from ..ml.serialization import load_model

    truths = [read_hdf5(path) for path in test_files]
    missing = [
        str(p) for p, bh in zip(test_files, truths, strict=True) if bh.h0 is None or bh.overlap is None
    ]
    if missing:
        raise click.ClickException(f'test files need H0, H and S (labels): {missing}')
    options = {
        'window': tuple(window),
        'kdensity': kdensity,
        'ghost_tolerance': ghost_tolerance,
        'ghost_filter': ghost_filter or None,
    }
    results = {'h0_alone': _run([(bh.replace(hamiltonian=bh.h0), bh) for bh in truths], options)}
    for folder in models:
        model = load_model(folder)
        start = time.perf_counter()
        predicted = [predict_hamiltonian(model, bh) for bh in truths]
        seconds = time.perf_counter() - start
        results[str(folder)] = _run(list(zip(predicted, truths, strict=True)), options)
        results[str(folder)]['summary']['inference_seconds'] = seconds
    report = {
        'benchmark': 'accuracy',
        'test_files': [str(p) for p in test_files],
        'options': options,
        'machine': {'platform': platform.platform(), 'python': platform.python_version()},
        'results': results,
    }
    _print_table(results)
    if output:
        output.write_text(json.dumps(report, indent=1))
        click.echo(f'wrote {output}')


def _run(pairs, options) -> dict:
    from ..ml.evaluation import evaluate_pairs, summarise

    rows = evaluate_pairs(pairs, **options)
    return {'summary': summarise(rows), 'structures': rows}


def _print_table(results: dict) -> None:
    columns = ('mae_raw', 'mae_shifted', 'band_mae', 'band_max', 'gap_error', 'ghost_bands')
    click.echo(f'{"":24s}' + ''.join(f'{c:>13s}' for c in columns))
    for name, result in results.items():
        summary = result['summary']
        click.echo(f'{name:24s}' + ''.join(f'{summary[c]:13.3f}' for c in columns))


@bench.command('speed')
@click.argument(
    'structures', nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option('--model', required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option('--protocol', default='balanced', show_default=True, help='Engine protocol of H0 and SCF.')
@click.option(
    '--scf-max-atoms',
    type=int,
    default=16,
    show_default=True,
    help='Run the full SCF only for structures with at most this many atoms.',
)
@click.option(
    '--spectra',
    type=click.Choice(['bands', 'gap']),
    default='bands',
    show_default=True,
    help="What predict computes after inference: Fermi level, gap and the band path ('bands') or the "
    "Fermi level and gap on the k-mesh only ('gap'; the band path costs one dense eigenproblem per point).",
)
@click.option(
    '--npoints', type=click.IntRange(min=2), default=100, show_default=True, help='Points of the band path.'
)
@click.option('-o', '--output', type=click.Path(dir_okay=False, path_type=Path), help='Write the JSON here.')
def speed(structures, model, protocol, scf_max_atoms, spectra, npoints, output):
    """Wall time of `nextham predict` (H0 + inference + spectra) versus the full SCF label, per structure.

    Every run is a separate process (imports included), one after the other, so the ratios compare
    like with like on a shared machine.
    """
    import os
    import sys
    import tempfile

    from ase.io import read

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in structures:
            n_atoms = len(read(path))
            row = {'structure': path.name, 'n_atoms': n_atoms, 'load_before': os.getloadavg()[0]}
            out = Path(scratch) / path.stem
            command = [sys.executable, '-m', 'aiida_nextham.engine.cli', 'predict', str(model), str(path)]
            command += ['--protocol', protocol, '-o', str(out / 'predict')]
            command += ['--bands', '--npoints', str(npoints)] if spectra == 'bands' else ['--gap']
            row['predict_seconds'], summary = _timed(command, out / 'predict' / 'summary.json')
            entry = (summary.get('structures') or [{}])[0]
            row['predict_phases'] = entry.get('timings', {})
            if n_atoms <= scf_max_atoms:
                command = [
                    sys.executable,
                    '-m',
                    'aiida_nextham.engine.dft_command',
                    str(path),
                    '--mode',
                    'label',
                ]
                command += [
                    '--protocol',
                    protocol,
                    '-o',
                    str(out / 'label.h5'),
                    '--summary',
                    str(out / 'label.json'),
                ]
                row['scf_seconds'], label = _timed(command, out / 'label.json')
                row['scf_phases'] = {k: label.get('timings', {}).get(k) for k in ('scf', 'h0_build', 'total')}
                row['speedup'] = row['scf_seconds'] / row['predict_seconds']
            rows.append(row)
            click.echo(json.dumps(row))
    report = {
        'benchmark': 'speed',
        'model': str(model),
        'protocol': protocol,
        'spectra': spectra,
        'npoints': npoints if spectra == 'bands' else None,
        'results': rows,
    }
    if output:
        output.write_text(json.dumps(report, indent=1))
        click.echo(f'wrote {output}')


def _timed(command: list[str], summary: Path) -> tuple[float, dict]:
    import subprocess

    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise click.ClickException(
            f'{" ".join(command)} failed ({result.returncode}): {result.stderr[-2000:]}'
        )
    return seconds, json.loads(summary.read_text()) if summary.is_file() else {}
