"""The ``aiida-nextham`` command line interface; ``aiida-nextham data`` is ``verdi data nextham``."""

import click
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.params import options, types

from .data import data_nextham
from .dataset import cmd_dataset
from .install import cmd_install
from .quickstart import cmd_quickstart
from .setup import cmd_setup

__all__ = ('cmd_root',)


@click.group('aiida-nextham', cls=VerdiCommandGroup, context_settings={'help_option_names': ['-h', '--help']})
@options.PROFILE(type=types.ProfileParamType(load_profile=True), expose_value=False)
@options.VERBOSITY()
def cmd_root():
    """Command line interface of the aiida-nextham plugin."""


cmd_root.add_command(data_nextham, name='data')
cmd_root.add_command(cmd_install, name='install')
cmd_root.add_command(cmd_setup, name='setup')
cmd_root.add_command(cmd_quickstart, name='quickstart')
cmd_root.add_command(cmd_dataset, name='dataset')
