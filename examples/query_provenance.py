"""Query the provenance of NextHAM results with the QueryBuilder: predictions, bands, labels, models.

Usage::

    python examples/query_provenance.py [--profile NAME] [--protocol fast] [--mode label|h0]

Prints four tables of the profile's nextham nodes:

1. every predicted Hamiltonian with its formula and number of atoms, the calculation and the model that
   predicted it, the model's training-set size and the group(s) of its training labels;
2. every band structure computed by a prediction, with its gap (eV) from the calculation's ``results``;
3. the DFT labels (H0, H and S from ``NexthamDftCalculation`` in ``label`` mode; ``--mode h0``: the
   zeroth-step Hamiltonians) with their structure and protocol, optionally of one protocol only;
4. which models were trained (``NexthamTrainCalculation``) on labels of which group.

Each table is a function returning a list of plain dicts (sorted by PK), so the queries can be reused in
scripts and notebooks. Nothing is loaded from a file: the numbers are node attributes and link labels.
"""

from __future__ import annotations

import argparse
import sys

from aiida import load_profile, orm
from aiida.plugins import CalculationFactory, DataFactory

# the classes by their entry points (``verdi plugin list aiida.data``, ``aiida.calculations``)
HamiltonianData = DataFactory('nextham.hamiltonian')
ModelData = DataFactory('nextham.model')
NexthamDftCalculation = CalculationFactory('nextham.dft')
NexthamTrainCalculation = CalculationFactory('nextham.train')
NexthamPredictCalculation = CalculationFactory('nextham.predict')


def _name(link_label: str) -> str:
    """``hamiltonians__si`` -> ``si``: outputs of a namespace are linked as ``<namespace>__<name>``."""
    return link_label.split('__', 1)[-1]


def training_groups() -> list[dict]:
    """Models trained by a ``NexthamTrainCalculation``, per group holding their training labels."""
    query = orm.QueryBuilder()
    query.append(orm.Group, tag='group', project='label')
    query.append(HamiltonianData, with_group='group', tag='label', project='id')
    query.append(NexthamTrainCalculation, with_incoming='label', tag='train', project='id')
    query.append(
        ModelData,
        with_incoming='train',
        edge_filters={'label': 'model'},
        tag='model',
        project=['id', 'uuid', 'attributes.train_set_size', 'attributes.n_parameters'],
    )
    rows: dict[tuple, dict] = {}
    for found in query.dict():
        group, model = found['group']['label'], found['model']
        row = rows.setdefault(
            (group, model['id']),
            {
                'group': group,
                'model': model['id'],
                'model_uuid': model['uuid'],
                'train': found['train']['id'],
                'train_set_size': model['attributes.train_set_size'],
                'n_parameters': model['attributes.n_parameters'],
                'labels': [],
            },
        )
        row['labels'] = sorted({*row['labels'], found['label']['id']})
    return sorted(rows.values(), key=lambda row: (row['model'], row['group']))


def predictions() -> list[dict]:
    """Every predicted Hamiltonian: formula, atoms, the calculation, the model and its training groups."""
    query = orm.QueryBuilder()
    query.append(NexthamPredictCalculation, tag='predict', project='id')
    query.append(
        HamiltonianData,
        with_incoming='predict',
        edge_filters={'label': {'like': 'hamiltonians__%'}},
        edge_tag='output',
        edge_project='label',
        tag='hamiltonian',
        project=['id', 'uuid', 'attributes.formula', 'attributes.n_atoms'],
    )
    query.append(
        ModelData,
        with_outgoing='predict',
        tag='model',
        project=['id', 'uuid', 'attributes.train_set_size'],
    )
    groups: dict[int, list[str]] = {}
    for row in training_groups():
        groups.setdefault(row['model'], []).append(row['group'])
    result = []
    for found in query.dict():
        hamiltonian, model = found['hamiltonian'], found['model']
        result.append(
            {
                'hamiltonian': hamiltonian['id'],
                'uuid': hamiltonian['uuid'],
                'name': _name(found['output']['label']),
                'formula': hamiltonian['attributes.formula'],
                'n_atoms': hamiltonian['attributes.n_atoms'],
                'predict': found['predict']['id'],
                'model': model['id'],
                'model_uuid': model['uuid'],
                'train_set_size': model['attributes.train_set_size'],
                'training_groups': sorted(groups.get(model['id'], [])),
            }
        )
    return sorted(result, key=lambda row: row['hamiltonian'])


def band_structures() -> list[dict]:
    """Band structures of predictions with their gap, VBM and CBM (eV) from the ``results`` Dict."""
    query = orm.QueryBuilder()
    query.append(NexthamPredictCalculation, tag='predict', project='id')
    query.append(
        orm.BandsData,
        with_incoming='predict',
        edge_filters={'label': {'like': 'bands__%'}},
        edge_tag='output',
        edge_project='label',
        tag='bands',
        project=['id', 'uuid'],
    )
    query.append(
        orm.Dict,
        with_incoming='predict',
        edge_filters={'label': 'results'},
        tag='results',
        project='attributes.structures',
    )
    query.append(ModelData, with_outgoing='predict', tag='model', project='id')
    result = []
    for found in query.dict():
        name = _name(found['output']['label'])
        entry = (found['results']['attributes.structures'] or {}).get(name) or {}
        gap = entry.get('gap') if isinstance(entry.get('gap'), dict) else {}
        result.append(
            {
                'bands': found['bands']['id'],
                'uuid': found['bands']['uuid'],
                'name': name,
                'formula': entry.get('formula'),
                'predict': found['predict']['id'],
                'model': found['model']['id'],
                'gap': gap.get('gap'),
                'vbm': gap.get('vbm'),
                'cbm': gap.get('cbm'),
                'is_metal': gap.get('is_metal'),
            }
        )
    return sorted(result, key=lambda row: row['bands'])


def dft_hamiltonians(protocol: str | None = None, mode: str = 'label') -> list[dict]:
    """Hamiltonians of ``NexthamDftCalculation`` with structure, protocol, basis and Fermi level.

    :param protocol: only those of this protocol (``fast``, ``balanced``, ``stringent``).
    :param mode: ``label`` (H0, SCF H and S: training labels) or ``h0`` (zeroth-step Hamiltonians).
    """
    query = orm.QueryBuilder()
    query.append(NexthamDftCalculation, tag='dft', project='id')
    query.append(
        orm.StructureData,
        with_outgoing='dft',
        edge_filters={'label': 'structure'},
        tag='structure',
        project='id',
    )
    query.append(
        HamiltonianData,
        with_incoming='dft',
        edge_filters={'label': 'hamiltonian'},
        filters={'attributes.mode': mode},
        tag='hamiltonian',
        project=['id', 'uuid', 'attributes.formula', 'attributes.basis_set', 'attributes.fermi_level'],
    )
    query.append(
        orm.Dict,
        with_incoming='dft',
        edge_filters={'label': 'output_parameters'},
        filters={'attributes.protocol': protocol} if protocol else {},
        tag='parameters',
        project='attributes.protocol',
    )
    result = []
    for found in query.dict():
        hamiltonian = found['hamiltonian']
        result.append(
            {
                'hamiltonian': hamiltonian['id'],
                'uuid': hamiltonian['uuid'],
                'formula': hamiltonian['attributes.formula'],
                'mode': mode,
                'structure': found['structure']['id'],
                'dft': found['dft']['id'],
                'protocol': found['parameters']['attributes.protocol'],
                'basis_set': hamiltonian['attributes.basis_set'],
                'fermi_level': hamiltonian['attributes.fermi_level'],
            }
        )
    return sorted(result, key=lambda row: row['hamiltonian'])


def _table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f'\n{title} ({len(rows)})')
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    print('  '.join(column.ljust(width) for column, width in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print('  '.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _cell(value) -> str:
    if isinstance(value, float):
        return f'{value:.3f}'
    if isinstance(value, list):
        return ','.join(map(str, value)) or '-'
    return '-' if value is None else str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profile', default=None, help='AiiDA profile (default: the default profile)')
    parser.add_argument('--protocol', default=None, help='only DFT Hamiltonians of this protocol (fast, ...)')
    parser.add_argument('--mode', default='label', choices=['label', 'h0'], help='DFT labels or H0 only')
    args = parser.parse_args(argv)
    load_profile(args.profile, allow_switch=True)

    _table(
        'Predicted Hamiltonians',
        predictions(),
        [
            'hamiltonian',
            'name',
            'formula',
            'n_atoms',
            'predict',
            'model',
            'train_set_size',
            'training_groups',
        ],
    )
    _table(
        'Band structures of predictions',
        band_structures(),
        ['bands', 'name', 'formula', 'predict', 'model', 'gap', 'vbm', 'cbm'],
    )
    _table(
        f'DFT Hamiltonians (mode {args.mode}' + (f', protocol {args.protocol})' if args.protocol else ')'),
        dft_hamiltonians(args.protocol, args.mode),
        ['hamiltonian', 'formula', 'structure', 'dft', 'protocol', 'basis_set', 'fermi_level'],
    )
    _table(
        'Models by training group',
        training_groups(),
        ['group', 'model', 'train', 'train_set_size', 'n_parameters', 'labels'],
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
