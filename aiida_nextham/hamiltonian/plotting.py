"""Band-structure and DOS figures (matplotlib, Agg canvas; no pyplot global state).

Energies are shown as E − E_F when the Fermi level is given, else as absolute energies.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .kpath import KPath

__all__ = ['plot_band_comparison', 'plot_bands', 'plot_dos', 'tick_label']


def tick_label(label: str) -> str:
    """``'GAMMA'``/``'G'`` -> ``'Γ'``, ``'X_1'`` -> ``'X$_1$'``; other labels unchanged."""
    if label.upper() in {'G', 'GAMMA', 'Γ', r'\GAMMA'}:
        return 'Γ'
    return re.sub(r'_(\w+)', r'$_{\1}$', label)


def _ticks(kpath: KPath) -> tuple[list[float], list[str]]:
    """Tick positions and labels; labels at the same abscissa merge (``'U|K'``)."""
    positions: list[float] = []
    names: list[list[str]] = []
    for index, label in kpath.labels:
        x = float(kpath.distances[index])
        label = tick_label(label)
        if positions and np.isclose(x, positions[-1], atol=1e-9):
            if label not in names[-1]:
                names[-1].append(label)
        else:
            positions.append(x)
            names.append([label])
    return positions, ['|'.join(n) for n in names]


def _save(figure: Figure, path_png: str | Path | None, dpi: int) -> None:
    if path_png is not None:
        figure.savefig(Path(path_png), dpi=dpi)


def plot_bands(
    kpath: KPath,
    energies: np.ndarray,
    fermi_level: float | None = None,
    path_png: str | Path | None = None,
    *,
    title: str | None = None,
    emin: float | None = None,
    emax: float | None = None,
    reference: np.ndarray | None = None,
    dpi: int = 150,
) -> Figure:
    """Plot bands (nk, n_bands) along ``kpath``; save to ``path_png`` when given.

    :param emin, emax: energy window, relative to E_F when ``fermi_level`` is given.
    :param reference: optional second set of bands (nk, m) drawn dashed (e.g. DFT), same energy zero.
    """
    energies = np.asarray(energies, dtype=np.float64)
    if energies.shape[0] != len(kpath):
        raise ValueError(f'{energies.shape[0]} k-points of energies for a path of {len(kpath)} points')
    shift = 0.0 if fermi_level is None else float(fermi_level)
    figure = Figure(figsize=(6.0, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = kpath.distances
    axes.plot(x, energies - shift, color='tab:blue', linewidth=1.0)
    if reference is not None:
        axes.plot(x, np.asarray(reference) - shift, color='black', linewidth=0.8, linestyle='--')
    positions, names = _ticks(kpath)
    axes.set_xticks(positions, names)
    for position in positions:
        axes.axvline(position, color='0.6', linewidth=0.6)
    if fermi_level is not None:
        axes.axhline(0.0, color='tab:red', linewidth=0.8, linestyle=':')
        axes.set_ylabel(r'$E - E_\mathrm{F}$ (eV)')
    else:
        axes.set_ylabel('E (eV)')
    axes.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1)
    axes.set_ylim(emin, emax)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    _save(figure, path_png, dpi)
    return figure


def plot_band_comparison(
    kpath: KPath,
    energies: np.ndarray,
    reference: np.ndarray,
    path_png: str | Path | None = None,
    *,
    zero: float = 0.0,
    reference_zero: float = 0.0,
    labels: tuple[str, str] = ('H', 'reference'),
    zero_label: str = 'Fermi level',
    ylabel: str = r'$E - E_\mathrm{F}$ (eV)',
    title: str | None = None,
    emin: float | None = None,
    emax: float | None = None,
    dpi: int = 150,
) -> Figure:
    """Two band structures along the same ``kpath``, each relative to its own energy zero.

    ``energies`` (nk, n) are drawn solid, ``reference`` (nk, m) dashed; ``zero`` and ``reference_zero``
    (eV) are subtracted from them (e.g. each one's Fermi level or valence-band maximum), so the plot
    compares band shapes, not the absolute energy scale. A dotted line marks the common zero.

    :param labels: legend entries of ``energies`` and ``reference``.
    :param zero_label: legend entry of the zero line (what the zero is).
    :param ylabel: y-axis label.
    :param emin, emax: energy window relative to the zero.
    """
    energies = np.asarray(energies, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    for name, values in (('energies', energies), ('reference', reference)):
        if values.ndim != 2 or values.shape[0] != len(kpath):
            raise ValueError(f'{name} must have shape ({len(kpath)}, n_bands), got {values.shape}')
    figure = Figure(figsize=(6.4, 5.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = kpath.distances
    solid = axes.plot(x, energies - float(zero), color='tab:blue', linewidth=1.2)
    dashed = axes.plot(
        x, reference - float(reference_zero), color='tab:orange', linewidth=1.2, linestyle='--'
    )
    positions, names = _ticks(kpath)
    axes.set_xticks(positions, names)
    for position in positions:
        axes.axvline(position, color='0.6', linewidth=0.6)
    line = axes.axhline(0.0, color='tab:red', linewidth=0.8, linestyle=':')
    figure.legend(
        [solid[0], dashed[0], line],
        [labels[0], labels[1], zero_label],
        loc='lower center',
        ncol=2,
        frameon=False,
    )
    axes.set_ylabel(ylabel)
    axes.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1)
    axes.set_ylim(emin, emax)
    if title:
        axes.set_title(title)
    figure.tight_layout(rect=(0.0, 0.1, 1.0, 1.0))  # room for the legend below the axes
    _save(figure, path_png, dpi)
    return figure


def plot_dos(
    grid: np.ndarray,
    dos: np.ndarray,
    fermi_level: float | None = None,
    path_png: str | Path | None = None,
    *,
    title: str | None = None,
    emin: float | None = None,
    emax: float | None = None,
    dpi: int = 150,
) -> Figure:
    """Plot a density of states (states/eV/cell) on an energy grid (nE,); save when asked."""
    grid = np.asarray(grid, dtype=np.float64)
    shift = 0.0 if fermi_level is None else float(fermi_level)
    figure = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(grid - shift, dos, color='black', linewidth=1.0)
    axes.fill_between(grid - shift, dos, where=grid <= shift if fermi_level is not None else None, alpha=0.25)
    if fermi_level is not None:
        axes.axvline(0.0, color='tab:red', linewidth=0.8, linestyle=':')
        axes.set_xlabel(r'$E - E_\mathrm{F}$ (eV)')
    else:
        axes.set_xlabel('E (eV)')
    axes.set_ylabel('DOS (states/eV/cell)')
    axes.set_xlim(
        emin if emin is not None else grid[0] - shift, emax if emax is not None else grid[-1] - shift
    )
    axes.set_ylim(0.0, None)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    _save(figure, path_png, dpi)
    return figure
