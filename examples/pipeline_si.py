"""DFT labels -> training -> prediction -> validation of silicon, every step an AiiDA process.

Usage::

    python examples/pipeline_si.py [--profile NAME] [--structures 4] [--steps 200] [-o OUTDIR]

Labels a few rattled 2-atom Si cells with the PySCF engine (``fast`` protocol: gth-szv), trains a small
NextHAM model on all but the last, predicts the held-out cell's Hamiltonian and bands, and validates them
against its DFT label; writes ``OUTDIR/pipeline_si_validation.png`` and prints the metrics (defaults:
band MAE 13 meV, gap 1.216 eV against DFT's 1.202 eV, no ghost bands). About 6 minutes with the defaults
(6 min 11 s on a shared 2-core machine). The profile is the one ``aiida-nextham setup`` makes (code
``nextham@localhost``); the guide docs/guides/pipeline.md explains each step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aiida import load_profile, orm
from aiida.engine import run_get_node
from ase.build import bulk

#: a small model for a CPU (the `small` preset with fewer channels)
CONFIG = {
    'data': {'split': [0.7, 0.3, 0.0], 'seed': 0},
    'model': {
        'preset': 'small',
        'cutoff': 5.0,
        'n_layers': 1,
        'node_channels': {'0': 8, '1': 4, '2': 4},
        'edge_channels': {'0': 8, '1': 4, '2': 4},
        'value_channels': {'0': 4, '1': 4, '2': 2},
        'pair_channels': {'0': 4, '1': 2},
        'n_heads': 2,
        'radial_hidden': 16,
    },
    'train': {'steps': 200, 'batch_size': 1, 'lr': 5e-3, 'warmup_steps': 10, 'n_kpoints': 2, 'val_every': 20},
}


def run_pipeline(
    code: orm.AbstractCode,
    n_structures: int = 4,
    config: dict | None = None,
    label_overrides: dict | None = None,
    npoints: int = 60,
    options: dict | None = None,
) -> dict:
    """The four steps; returns their nodes (work chains, labels, model, bands, metrics)."""
    from aiida_nextham.calculations.functions import compute_bands
    from aiida_nextham.data.pseudo import install_pyscf_gth_family
    from aiida_nextham.workflows.dataset import NexthamDatasetWorkChain
    from aiida_nextham.workflows.dft_base import NexthamDftBaseWorkChain
    from aiida_nextham.workflows.predict import NexthamPredictBandsWorkChain
    from aiida_nextham.workflows.train import NexthamTrainWorkChain
    from aiida_nextham.workflows.validate import NexthamValidateWorkChain

    # [labels]
    # PySCF's GTH pseudopotentials as a GthPseudoFamily (installed offline, reused afterwards)
    family, _ = install_pyscf_gth_family('pbe')
    parent = orm.StructureData(ase=bulk('Si', 'diamond', a=5.43))

    # one label = NexthamDftBaseWorkChain (restarts on SCF failures); the dataset work chain generates
    # seeded rattled cells from the parent and runs one per structure
    base = NexthamDftBaseWorkChain.get_builder_from_protocol(
        code, parent, protocol='fast', overrides=label_overrides, pseudo_family=family.label
    )
    builder = NexthamDatasetWorkChain.get_builder()
    builder.parent_structure = parent
    builder.recipe = orm.Dict({'n_structures': n_structures, 'rattle': 0.05, 'strain': 0.01, 'seed': 0})
    builder.base.dft.code = code
    builder.base.dft.parameters = base.dft.parameters
    if base.dft.get('kpoints') is not None:  # a fixed SCF mesh from the overrides; else the protocol's
        builder.base.dft.kpoints = base.dft.kpoints
    builder.base.pseudo_family = orm.Str(family.label)
    for key, value in (options or {}).items():
        builder.base.dft.metadata.options[key] = value
    results, dataset = run_get_node(builder)
    labels = dict(results['hamiltonians'])  # {'structure_0000': HamiltonianData (H0, H, S), ...}
    # [labels]

    # [training]
    # train on every label but the last; the config is a `nextham train` run config without data paths
    *train_keys, heldout_key = sorted(labels)
    builder = NexthamTrainWorkChain.get_builder_from_group(
        [labels[key] for key in train_keys], code, config or CONFIG, options=options
    )
    results, train = run_get_node(builder)
    model = results['model']  # ModelData: safetensors weights + JSON config
    # [training]

    # [prediction]
    # H0 of the held-out structure by PySCF, H = H0 + ΔH by the model, bands along seekpath's path
    structure = labels[heldout_key].creator.inputs.structure
    builder = NexthamPredictBandsWorkChain.get_builder_from_protocol(
        code, model, structure, protocol='fast', pseudo_family=family.label, options=options
    )
    builder.kpath = orm.Dict({'path': 'auto', 'npoints': npoints})
    predicted, predict = run_get_node(builder)
    # [prediction]

    # [validation]
    # the DFT label's bands at the same k-points, then band MAE, gap error and ghost bands in ±2 eV
    bands = predicted['band_structure']
    reference = compute_bands(labels[heldout_key], bands.creator.inputs.kpoints)
    results, validate = run_get_node(
        NexthamValidateWorkChain,
        predicted=bands,
        reference=reference['bands'],
        predicted_parameters=predicted['output_parameters'],
        reference_parameters=reference['output_parameters'],
        parameters=orm.Dict({'window': [-2.0, 2.0]}),
    )
    # [validation]
    return {
        'family': family,
        'parent': parent,
        'dataset': dataset,
        'labels': labels,
        'train_keys': train_keys,
        'heldout_key': heldout_key,
        'train': train,
        'model': model,
        'structure': structure,
        'predict': predict,
        'bands': bands,
        'validate': validate,
        'metrics': results.get('band_metrics'),
        'plot': results.get('plot'),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profile', default=None, help='AiiDA profile (default: the default profile)')
    parser.add_argument('--code', default='nextham@localhost', help='the nextham code (aiida-nextham setup)')
    parser.add_argument('--structures', type=int, default=4, help='labelled cells, the last one held out')
    parser.add_argument('--steps', type=int, default=CONFIG['train']['steps'], help='training steps')
    parser.add_argument('--npoints', type=int, default=60, help='k-points of the band path')
    parser.add_argument('--label-overrides', type=json.loads, default=None, help='engine settings (JSON)')
    parser.add_argument('-o', '--outdir', type=Path, default=Path('pipeline-output'))
    args = parser.parse_args(argv)
    if args.structures < 2 or args.steps < 1:
        parser.error('need at least 2 structures (one is held out) and 1 training step')

    load_profile(args.profile, allow_switch=True)
    code = orm.load_code(args.code)
    config = json.loads(json.dumps(CONFIG))
    config['train']['steps'] = args.steps
    options = {'environment_variables': {'OMP_NUM_THREADS': '1'}}
    nodes = run_pipeline(code, args.structures, config, args.label_overrides, args.npoints, options)

    for name in ('dataset', 'train', 'predict', 'validate'):
        node = nodes[name]
        print(f'{node.process_label}<{node.pk}>: exit status {node.exit_status}')
        if not node.is_finished_ok:
            print(f'  failed: {node.exit_message}; see `verdi process report {node.pk}`')
            return 1
    metrics = nodes['metrics'].get_dict()
    print(f'model ModelData<{nodes["model"].pk}>, predicted bands BandsData<{nodes["bands"].pk}>')
    gaps = [
        f'{gap:.3f} eV' if gap is not None else 'none'
        for gap in (metrics['gap_predicted'], metrics['gap_reference'])
    ]
    print(
        f'band MAE {metrics["band_mae"]:.1f} meV within ±2 eV of the VBM, gap {gaps[0]} (DFT {gaps[1]}), '
        f'ghost bands {metrics["ghost_bands"]}'
    )
    if nodes['plot'] is not None:
        args.outdir.mkdir(parents=True, exist_ok=True)
        figure = args.outdir / 'pipeline_si_validation.png'
        figure.write_bytes(nodes['plot'].get_content(mode='rb'))
        print(f'validation plot: {figure}')
    print(f'provenance: verdi node graph generate {nodes["bands"].pk} --ancestor-depth 6')
    return 0


if __name__ == '__main__':
    sys.exit(main())
