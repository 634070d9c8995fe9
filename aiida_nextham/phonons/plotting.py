"""Phonon band structure and DOS in one figure (matplotlib Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..hamiltonian.plotting import _ticks

__all__ = ['plot_phonons']


def plot_phonons(result, path: str | Path | None = None, title: str | None = None, dpi: int = 150) -> Figure:
    """Bands (THz) along the path beside the total DOS; imaginary modes drawn as negative frequencies.

    An unstable structure gets a red note in the title, so a figure never hides imaginary modes.
    """
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1, 2, width_ratios=(3, 1), wspace=0.05)
    bands = figure.add_subplot(grid[0])
    dos = figure.add_subplot(grid[1], sharey=bands)
    x = result.kpath.distances
    bands.plot(x, result.frequencies, color='tab:blue', lw=1.0)
    positions, labels = _ticks(result.kpath)
    bands.set_xticks(positions, labels)
    for position in positions:
        bands.axvline(position, color='0.7', lw=0.6)
    bands.axhline(0.0, color='0.4', lw=0.6, ls='--')
    bands.set_xlim(x[0], x[-1])
    bands.set_ylabel('Frequency (THz)')
    dos.plot(result.dos, result.dos_frequencies, color='tab:blue', lw=1.0)
    dos.fill_betweenx(result.dos_frequencies, 0, result.dos, color='tab:blue', alpha=0.2)
    dos.set_xlabel('DOS')
    dos.set_xlim(left=0)
    dos.set_xticks([])
    dos.tick_params(labelleft=False)
    low = min(0.0, float(np.min(result.frequencies)))
    bands.set_ylim(low - 0.5 if low < 0 else 0.0, float(np.max(result.frequencies)) * 1.05 + 0.1)
    heading = title or result.primitive.get_chemical_formula()
    if not result.dynamically_stable:
        heading += f'  — dynamically UNSTABLE (min {result.stability["min_frequency"]:.2f} THz)'
    figure.suptitle(heading, color='black' if result.dynamically_stable else 'tab:red')
    if path is not None:
        figure.savefig(Path(path), dpi=dpi)
    return figure
