"""``NexthamDatasetWorkChain``: DFT labels for many structures at once, collected in a Group.

The structures are either given (a dynamic namespace of ``StructureData``, e.g. taken from the
database) or generated from a parent structure and a recipe by the :func:`generate_structures`
calcfunction (supercell, random strains, random displacements, seeded), so every generated structure
is linked to its parent and recipe in the provenance graph. One ``NexthamDftBaseWorkChain`` runs per
structure, all submitted in one step (they run concurrently); each step is checkpointed, so an
interrupted dataset resumes where it stopped.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_

from .dft_base import NexthamDftBaseWorkChain

__all__ = ('RECIPE_KEYS', 'NexthamDatasetWorkChain', 'generate_structures', 'validate_recipe')

#: keys of the ``recipe`` input with their meaning
RECIPE_KEYS = {
    'supercell': 'repetitions of the parent cell, [n1, n2, n3] or one integer (default 1).',
    'n_structures': 'number of structures to generate (required, >= 1).',
    'rattle': 'standard deviation of the Gaussian displacement of every Cartesian coordinate, Å (default 0).',
    'strain': 'maximum absolute component of the random symmetric strain tensor (default 0).',
    'seed': 'seed of the random generator (required: generated datasets are reproducible).',
}


def validate_recipe(recipe: dict) -> str | None:
    """Return an error message for an invalid recipe, None if it is fine."""
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        return f'unknown recipe keys {unknown}; accepted: {sorted(RECIPE_KEYS)}'
    for key in ('n_structures', 'seed'):
        if key not in recipe:
            return f'the recipe needs `{key}`'
    if not isinstance(recipe['n_structures'], int) or recipe['n_structures'] < 1:
        return f'n_structures must be a positive integer, got {recipe["n_structures"]!r}'
    if not isinstance(recipe['seed'], int) or recipe['seed'] < 0:
        return f'seed must be a non-negative integer, got {recipe["seed"]!r}'
    supercell = recipe.get('supercell', 1)
    reps = [supercell] * 3 if isinstance(supercell, int) else list(supercell)
    if len(reps) != 3 or any(not isinstance(n, int) or n < 1 for n in reps):
        return f'supercell must be a positive integer or three of them, got {supercell!r}'
    for key in ('rattle', 'strain'):
        value = recipe.get(key, 0.0)
        if not isinstance(value, int | float) or value < 0:
            return f'{key} must be a non-negative number, got {value!r}'
    if recipe.get('strain', 0.0) >= 0.5:
        return f'strain {recipe["strain"]} is unphysically large (must be < 0.5)'
    return None


@calcfunction
def generate_structures(parent: orm.StructureData, recipe: orm.Dict) -> dict:
    """Seeded supercell + random strain + random displacements of ``parent``, per ``recipe``.

    Structure ``k`` uses its own generator ``default_rng([seed, k])``, so adding structures to a
    recipe never changes the ones already generated.
    """
    settings = recipe.get_dict()
    message = validate_recipe(settings)
    if message:
        raise ValueError(message)
    supercell = settings.get('supercell', 1)
    reps = [supercell] * 3 if isinstance(supercell, int) else list(supercell)
    base = parent.get_ase().repeat(reps)
    rattle = float(settings.get('rattle', 0.0))
    strain = float(settings.get('strain', 0.0))
    results = {}
    for index in range(settings['n_structures']):
        rng = np.random.default_rng([settings['seed'], index])
        atoms = base.copy()
        if strain > 0:
            eps = rng.uniform(-strain, strain, size=(3, 3))
            eps = 0.5 * (eps + eps.T)
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        if rattle > 0:
            atoms.positions = atoms.positions + rng.normal(0.0, rattle, size=atoms.positions.shape)
        structure = orm.StructureData(ase=atoms)
        structure.label = f'{parent.get_formula()} #{index}'
        results[f'structure_{index:04d}'] = structure
    return results


def _validate_inputs(inputs, _=None):
    has_list = bool(inputs.get('structures'))
    has_recipe = 'parent_structure' in inputs or 'recipe' in inputs
    if has_list and has_recipe:
        return 'give either `structures` or `parent_structure` + `recipe`, not both'
    if not has_list and not ('parent_structure' in inputs and 'recipe' in inputs):
        return 'give `structures`, or both `parent_structure` and `recipe`'
    if 'recipe' in inputs:
        return validate_recipe(inputs['recipe'].get_dict())
    return None


class NexthamDatasetWorkChain(WorkChain):
    """Label many structures concurrently with ``NexthamDftBaseWorkChain``; collect them in a Group."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace(
            'structures',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='The structures to label (keys become the output keys).',
        )
        spec.input(
            'parent_structure',
            valid_type=orm.StructureData,
            required=False,
            help='Parent structure of a generated dataset (with `recipe`).',
        )
        spec.input(
            'recipe',
            valid_type=orm.Dict,
            required=False,
            help='Generation recipe: ' + '; '.join(f'{k}: {v}' for k, v in RECIPE_KEYS.items()),
        )
        spec.input(
            'group_label',
            valid_type=orm.Str,
            required=False,
            help='Label of the Group collecting the Hamiltonians (default: nextham/dataset/<uuid>).',
        )
        spec.expose_inputs(NexthamDftBaseWorkChain, namespace='base', exclude=('dft.structure',))
        spec.inputs.validator = _validate_inputs

        spec.outline(
            cls.setup,
            if_(cls.should_generate)(cls.generate),
            cls.run_labels,
            cls.collect,
        )
        spec.output_namespace(
            'hamiltonians',
            valid_type=orm.Data,
            dynamic=True,
            help='The HamiltonianData of every structure that succeeded.',
        )
        spec.output(
            'summary',
            valid_type=orm.Dict,
            help='n_ok, n_failed, the failed keys with their exit codes, wall times, group label.',
        )
        spec.exit_code(400, 'ERROR_ALL_FAILED', message='no structure of the dataset could be labelled')

    def setup(self):
        label = (
            self.inputs.group_label.value
            if 'group_label' in self.inputs
            else f'nextham/dataset/{self.node.uuid}'
        )
        group, created = orm.Group.collection.get_or_create(label)
        if created:
            group.description = f'Hamiltonians produced by NexthamDatasetWorkChain<{self.node.pk}>'
        self.ctx.group_label = label
        self.ctx.structures = dict(self.inputs.get('structures', {}))

    def should_generate(self):
        return 'recipe' in self.inputs

    def generate(self):
        self.ctx.structures = dict(generate_structures(self.inputs.parent_structure, self.inputs.recipe))
        self.report(f'generated {len(self.ctx.structures)} structures from the recipe')

    def run_labels(self):
        children = {}
        for key, structure in sorted(self.ctx.structures.items()):
            inputs = self.exposed_inputs(NexthamDftBaseWorkChain, namespace='base')
            inputs['dft']['structure'] = structure
            inputs['metadata'] = {'call_link_label': f'label_{key}'}
            children[key] = self.submit(NexthamDftBaseWorkChain, **inputs)
        self.report(f'submitted {len(children)} labelling work chains')
        self.ctx.child_keys = sorted(children)
        return ToContext(**{f'child_{key}': node for key, node in children.items()})

    def collect(self):
        group = orm.load_group(self.ctx.group_label)
        ok, failed, wall_times, nodes = [], {}, {}, []
        for key in self.ctx.child_keys:
            child = self.ctx[f'child_{key}']
            wall_times[key] = (child.mtime - child.ctime).total_seconds()
            if child.is_finished_ok and 'hamiltonian' in child.outputs:
                hamiltonian = child.outputs.hamiltonian
                hamiltonian.base.extras.set('dataset_key', key)
                nodes.append(hamiltonian)
                self.out(f'hamiltonians.{key}', hamiltonian)
                ok.append(key)
            else:
                failed[key] = child.exit_status
        if nodes:
            group.add_nodes(nodes)
        times = list(wall_times.values())
        summary = {
            'n_structures': len(self.ctx.child_keys),
            'n_ok': len(ok),
            'n_failed': len(failed),
            'failed': failed,
            'group_label': self.ctx.group_label,
            'wall_times': wall_times,
            'wall_time_total': float(sum(times)),
            'wall_time_max': float(max(times)) if times else 0.0,
        }
        self.out('summary', orm.Dict(summary).store())
        self.report(
            f'{len(ok)} of {len(self.ctx.child_keys)} labels succeeded; Group `{self.ctx.group_label}`'
        )
        if not ok:
            return self.exit_codes.ERROR_ALL_FAILED
        return None
