"""``nextham-exit-codes``: the exit codes of every process of the plugin, read from the process specs.

The directive loads every entry point named ``nextham.*`` of the groups ``aiida.calculations`` and
``aiida.workflows`` (no AiiDA profile is needed to load a process class and read ``spec().exit_codes``)
and renders

- one table of the codes the processes inherit from aiida-core (``CalcJob``, ``WorkChain``,
  ``BaseRestartWorkChain``, process functions), and
- one section per process with a table of the codes it defines itself,

each row with the advice of :data:`exit_code_advice.ADVICE` (inline MyST Markdown). Advice whose key
names no existing code is a build warning, so the page can neither miss a new code's row nor keep
advice for a code that is gone.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

from docutils import nodes
from docutils.parsers.rst import Directive
from exit_code_advice import ADVICE
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
GROUPS = ('aiida.calculations', 'aiida.workflows')
PREFIX = 'nextham.'


@dataclass(frozen=True)
class Process:
    group: str
    entry_point: str
    cls: type
    #: the aiida-core class whose exit codes it inherits
    base: type

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def path(self) -> str:
        return f'{self.cls.__module__}.{self.cls.__qualname__}'

    @property
    def kind(self) -> str:
        from aiida.engine import CalcJob, WorkChain

        if issubclass(self.cls, CalcJob):
            return 'CalcJob'
        if issubclass(self.cls, WorkChain):
            return 'WorkChain'
        return 'calcfunction'


def _aiida_base(cls: type) -> type:
    """The first aiida-core class in the MRO of ``cls`` (whose exit codes ``cls`` inherits)."""
    for base in cls.__mro__[1:]:
        if base.__module__.startswith('aiida.') and hasattr(base, 'spec'):
            return base
    raise TypeError(f'{cls} is not an AiiDA process')


def plugin_processes() -> list[Process]:
    """Every ``nextham.*`` CalcJob, WorkChain and process function, by group and entry-point name."""
    processes = []
    for group in GROUPS:
        for entry_point in sorted(entry_points(group=group), key=lambda ep: ep.name):
            if not entry_point.name.startswith(PREFIX):
                continue
            obj = entry_point.load()
            cls = obj if isinstance(obj, type) else obj.process_class  # a process function: its class
            processes.append(Process(group, entry_point.name, cls, _aiida_base(cls)))
    return processes


@dataclass(frozen=True)
class Code:
    status: int
    label: str
    message: str


def exit_codes(cls: type) -> list[Code]:
    """The exit codes of a process class, by status."""
    codes = [Code(code.status, label, code.message) for label, code in cls.spec().exit_codes.items()]
    return sorted(codes, key=lambda code: (code.status, code.label))


def own_exit_codes(process: Process) -> list:
    """The codes ``process`` defines itself (not identical to one of its aiida-core base class)."""
    inherited = {(code.status, code.label) for code in exit_codes(process.base)}
    return [code for code in exit_codes(process.cls) if (code.status, code.label) not in inherited]


def advice_for(entry_point: str, label: str, used: set) -> str:
    """The advice for ``label``: specific to ``entry_point`` (``'nextham.dft:LABEL'``) or general."""
    for key in (f'{entry_point}:{label}', label):
        if key in ADVICE:
            used.add(key)
            return ADVICE[key]
    return ''


class ExitCodesDirective(Directive):
    """Render the exit-code tables (no arguments, no content; used from a MyST page: advice is Markdown)."""

    has_content = False

    def _inline(self, text: str) -> list[nodes.Node]:
        parsed, messages = self.state.inline_text(text, self.lineno)
        return [*parsed, *messages]

    def _table(self, header: list[str], rows: list[list], widths: list[int]) -> nodes.table:
        table = nodes.table(classes=['nextham-exit-codes'])
        group = nodes.tgroup(cols=len(header))
        table += group
        for width in widths:
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row([[nodes.Text(text)] for text in header])
        body = nodes.tbody()
        group += body
        for row in rows:
            body += self._row(row)
        return table

    @staticmethod
    def _row(cells: list[list[nodes.Node]]) -> nodes.row:
        row = nodes.row()
        for content in cells:
            entry = nodes.entry()
            paragraph = nodes.paragraph()
            paragraph.extend(content)
            entry += paragraph
            row += entry
        return row

    def _code_row(self, code, advice: str, extra: list | None = None) -> list[list[nodes.Node]]:
        cells = [
            [nodes.Text(str(code.status))],
            [nodes.literal(text=code.label)],
            [nodes.Text(code.message)],
        ]
        if extra is not None:
            cells.append(extra)
        cells.append(self._inline(advice) if advice else [nodes.Text('')])
        return cells

    def _section(self, title: list[nodes.Node], ident: str) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(ident)], names=[nodes.fully_normalize_name(ident)])
        section += nodes.title('', '', *title)
        self.state.document.note_implicit_target(section)
        return section

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        processes = plugin_processes()
        used: set[str] = set()
        for process in processes:
            env.note_dependency(sys.modules[process.cls.__module__].__file__)

        # the aiida-core codes, once, with the plugin processes that inherit them
        bases: dict[tuple, tuple] = {}
        for process in processes:
            for code in exit_codes(process.base):
                key = (code.status, code.label)
                _, names = bases.setdefault(key, (code, []))
                if process.base.__name__ not in names:
                    names.append(process.base.__name__)
        core = self._section(
            [nodes.Text('Codes every process inherits from aiida-core')], 'exit-codes-aiida-core'
        )
        rows = [
            self._code_row(code, advice_for('', code.label, used), [nodes.Text(', '.join(names))])
            for _, (code, names) in sorted(bases.items())
        ]
        core += self._table(
            ['Status', 'Label', 'Message', 'Defined by', 'What to do'], rows, [6, 22, 28, 14, 40]
        )

        result = [core]
        for process in processes:
            section = self._section(
                [nodes.literal(text=process.name), nodes.Text(f' ({process.kind} {process.entry_point})')],
                f'exit-codes-{process.group}-{process.entry_point}',
            )
            intro = nodes.paragraph()
            intro += self._inline(
                f'{{py:obj}}`{process.path}`, entry point `{process.entry_point}` in `{process.group}`; '
                f'it also returns the codes of aiida-core’s `{process.base.__name__}` (above).'
            )
            section += intro
            own = own_exit_codes(process)
            if own:
                rows = [
                    self._code_row(code, advice_for(process.entry_point, code.label, used)) for code in own
                ]
                section += self._table(['Status', 'Label', 'Message', 'What to do'], rows, [6, 24, 35, 45])
            else:
                section += nodes.paragraph(text='It defines no exit codes of its own.')
            result.append(section)

        for key in sorted(set(ADVICE) - used):
            LOGGER.warning(
                'exit_code_advice.ADVICE[%r] matches no exit code of any nextham process (stale advice)',
                key,
                location=(env.docname, self.lineno),
            )
        return result


def setup(app):
    app.add_directive('nextham-exit-codes', ExitCodesDirective)
    return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
