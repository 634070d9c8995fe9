"""``nextham-packages``: the API reference of every public module of a package, one section each.

Usage (in a reStructuredText context, e.g. a MyST ``{eval-rst}`` block)::

    .. nextham-packages:: aiida_nextham
       :order: hamiltonian dft ml

gives one section per subpackage (those named in ``:order:`` first, the others after them), with the
package's docstring and one subsection with ``automodule`` per public module (names starting with ``_``
are private). The modules are found by walking the package, so a module or package added to the code
appears in the API reference without editing the docs.

The docstrings are written for people reading the source: plain-text mathematics such as ``|f|²``,
``f*(k)`` or ``<φ_i|H|φ_j>`` and titles underlined by eye. :func:`sanitize_docstring` (connected to
``autodoc-process-docstring``) escapes the ``|`` and the ``*`` that are not reStructuredText markup, outside
literal blocks and inline literals, and lengthens title underlines that are too short, so that such
docstrings render as written instead of breaking the warning-free build. A cross-reference to a sibling
module written like a relative import (``:mod:`.data``` in ``aiida_nextham.arpes.fitdata``) is made
absolute (``aiida_nextham.arpes.data``): Sphinx would otherwise search every name ending in ``.data``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import sys

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList


def _raise(name: str) -> None:
    """``pkgutil.walk_packages`` ignores packages that fail to import; a broken package is an error here."""
    raise ImportError(f'cannot import {name} for the API reference')


def public_modules(package: str) -> list[str]:
    """``package`` and its public submodules (recursively), sorted."""
    root = importlib.import_module(package)
    names = [package]
    if hasattr(root, '__path__'):
        for info in pkgutil.walk_packages(root.__path__, prefix=f'{package}.', onerror=_raise):
            if not any(part.startswith('_') for part in info.name.split('.')):
                names.append(info.name)
    return sorted(names)


#: inline literals and interpreted text (roles), left untouched
_PROTECTED = re.compile(r'``.+?``|(?::[\w:.+-]+:)?`[^`]+`_{0,2}')
#: emphasis and strong emphasis that are meant as markup
_EMPHASIS = re.compile(r'(?<![\w*\\])(\*\*?)(?=\S)[^*]*?\S\1(?![\w*])')
_UNDERLINE = re.compile(r'^\s*([=\-~^"\'`#*+:.])\1{2,}\s*$')
_DIRECTIVE = re.compile(r'^\s*\.\. [\w:-]+::')


def _escape_text(text: str) -> str:
    out, position = [], 0
    for match in _EMPHASIS.finditer(text):
        out.append(text[position : match.start()].replace('|', '\\|').replace('*', '\\*'))
        out.append(match.group(0).replace('|', '\\|'))
        position = match.end()
    out.append(text[position:].replace('|', '\\|').replace('*', '\\*'))
    return ''.join(out)


def _escape_line(line: str) -> str:
    bullet = re.match(r'\s*[*+-] ', line)  # a list item's marker is markup
    position = bullet.end() if bullet else 0
    out = [line[:position]]
    for match in _PROTECTED.finditer(line):
        out.append(_escape_text(line[position : match.start()]))
        out.append(match.group(0))
        position = match.end()
    out.append(_escape_text(line[position:]))
    return ''.join(out)


_RELATIVE = re.compile(r'(:(?:py:)?[a-z]+:`~?)\.(\w+)')


def _absolute_references(line: str, package: str) -> str:
    """``:mod:`.sibling...``` → ``:mod:`package.sibling...``` when ``package.sibling`` is a module."""

    def replace(match: re.Match) -> str:
        name = f'{package}.{match[2]}'
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        return f'{match[1]}{name}' if found else match[0]

    return _RELATIVE.sub(replace, line) if package else line


def _package_of(what: str, name: str, obj) -> str:
    """The package whose modules a relative reference in the docstring of ``obj`` names."""
    module = name if what == 'module' else getattr(obj, '__module__', None) or name.rpartition('.')[0]
    loaded = sys.modules.get(module)
    if loaded is not None and hasattr(loaded, '__path__'):  # a package's own docstring: its submodules
        return module
    return module.rpartition('.')[0]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def sanitize_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    """Escape plain-text ``|`` and ``*`` and fix short title underlines in ``lines`` (in place)."""
    package = _package_of(what, name, obj)
    literal_indent = None  # indentation of the line that opened a literal block or directive
    for index, line in enumerate(lines):
        if literal_indent is not None:
            if not line.strip() or _indent(line) > literal_indent:
                continue
            literal_indent = None
        if _UNDERLINE.match(line) and index and lines[index - 1].strip():
            title = lines[index - 1].rstrip()
            if len(line.strip()) < len(title.strip()) and _indent(line) == _indent(title):
                lines[index] = line[: _indent(line)] + line.strip()[0] * len(title.strip())
            continue
        if _DIRECTIVE.match(line):
            literal_indent = _indent(line)
            continue
        lines[index] = _escape_line(_absolute_references(line, package))
        if line.rstrip().endswith('::'):
            literal_indent = _indent(line)


class PackagesDirective(Directive):
    required_arguments = 1
    has_content = False
    option_spec = {'order': directives.unchanged}

    def _section(self, name: str) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(f'api-{name}')], names=[nodes.fully_normalize_name(name)])
        section += nodes.title('', '', nodes.literal(text=name))
        self.state.document.note_implicit_target(section)
        return section

    def _automodule(self, name: str, parent: nodes.Element) -> None:
        content = StringList([f'.. automodule:: {name}', ''], source=f'<nextham-packages {name}>')
        self.state.nested_parse(content, self.content_offset, parent)

    def run(self) -> list[nodes.Node]:
        root = importlib.import_module(self.arguments[0])
        found = sorted(
            info.name
            for info in pkgutil.iter_modules(root.__path__)
            if info.ispkg and not info.name.startswith('_')
        )
        order = [name for name in self.options.get('order', '').split() if name in found]
        result = []
        for short in order + [name for name in found if name not in order]:
            package = f'{root.__name__}.{short}'
            section = self._section(package)
            self._automodule(package, section)
            for name in public_modules(package)[1:]:
                subsection = self._section(name)
                self._automodule(name, subsection)
                section += subsection
            result.append(section)
        return result


def setup(app):
    app.add_directive('nextham-packages', PackagesDirective)
    app.connect('autodoc-process-docstring', sanitize_docstring)
    return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
