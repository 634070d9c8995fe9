"""``aiida-nextham install``: install pseudopotential families (offline, from the files PySCF ships)."""

from __future__ import annotations

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.utils import decorators, echo

__all__ = ('cmd_install',)


@click.group('install', cls=VerdiCommandGroup)
def cmd_install():
    """Install pseudopotential families as aiida-pseudo groups."""


@cmd_install.command('gth')
@click.option(
    '-x',
    '--functional',
    default='pbe',
    show_default=True,
    help='Functional of the GTH file bundled with PySCF (pbe, blyp, pade, bp, hcth120, ...).',
)
@click.option(
    '--label', default=None, help='Label of the family (default: GTH/<FUNCTIONAL>/pyscf-<version>).'
)
@decorators.with_dbenv()
def cmd_install_gth(functional: str, label: str | None):
    """Install the GTH pseudopotentials bundled with PySCF as a family (offline, idempotent).

    One pseudopotential per element: the entry PySCF uses by default (e.g. `Si GTH-PBE-q4`).
    """
    from ..data.pseudo import install_pyscf_gth_family

    try:
        family, created = install_pyscf_gth_family(functional, label=label)
    except ValueError as exc:
        echo.echo_critical(str(exc))
    if created:
        echo.echo_success(
            f'installed the family `{family.label}` ({family.count()} elements, PK {family.pk})'
        )
    else:
        echo.echo_report(
            f'the family `{family.label}` is already installed ({family.count()} elements, PK {family.pk})'
        )
