"""Inputs that make the real engines as cheap as they get, shared by the tests that run processes."""

from __future__ import annotations

from pathlib import Path

#: the three rattled 2-atom Si labels (gth-szv, H0, H, S) shipped with the tests
LABELS = sorted((Path(__file__).parent / 'data' / 'ml').glob('si2_rattled_*.h5'))

#: the `small` preset with the fewest channels: a few thousand parameters, 4.5 Å (within the labels' blocks)
TINY_MODEL = {
    'preset': 'small',
    'cutoff': 4.5,
    'n_layers': 1,
    'node_channels': {'0': 8, '1': 4, '2': 4},
    'edge_channels': {'0': 8, '1': 4, '2': 4},
    'value_channels': {'0': 4, '1': 4, '2': 2},
    'pair_channels': {'0': 4, '1': 2},
    'n_heads': 2,
    'radial_hidden': 16,
}
