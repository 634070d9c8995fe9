"""Sphinx configuration of the aiida-nextham documentation.

Build (warning-free is required: CI runs ``tests/test_docs.py``)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is fetched from the network: no intersphinx, no remote images, no AiiDA profile needed.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / '_ext'))
# the API reference imports the science packages (torch, pyscf, ...): keep them single-threaded
os.environ.setdefault('OMP_NUM_THREADS', '1')
# engine.<name>_command modules import engine.cli, which imports them back: load the group first so that
# autodoc can import the sub-command modules in any order
import aiida_nextham.engine.cli  # noqa: E402, F401

project = 'aiida-nextham'
author = 'The aiida-nextham developers'
copyright = 'the aiida-nextham developers'  # noqa: A001 (Sphinx's name)
release = _version('aiida-nextham')
version = '.'.join(release.split('.')[:2])

# no sphinx.ext.viewcode: highlighting every module's source doubles the build time
extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx_click',
    'nextham_api',
    'nextham_exit_codes',
]

source_suffix = {'.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

# --------------------------------------------------------------------------------------------- MyST
myst_enable_extensions = ['colon_fence', 'deflist']
myst_heading_anchors = 3

# ------------------------------------------------------------------------------------------ autodoc
# members defined in each module only: names a package re-exports (its ``__all__``) are documented once,
# in the module that defines them
autodoc_default_options = {'members': True, 'show-inheritance': True, 'ignore-module-all': True}
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_typehints_format = 'short'

# --------------------------------------------------------------------------------------------- HTML
html_theme = 'furo'
html_title = f'aiida-nextham {release}'
html_static_path: list[str] = []
html_show_sourcelink = False
