"""GTH pseudopotentials (CP2K format, as PySCF ships them) as aiida-pseudo data and families.

aiida-pseudo has no GTH type, so :class:`GthPseudoData` adds one: a single-element file in the CP2K
``GTH_POTENTIALS`` format, whose element, name (e.g. ``GTH-PBE-q4``), aliases, functional and valence
charge are parsed from the file and stored as queryable attributes next to the md5 that aiida-pseudo
records for every pseudopotential. :class:`GthPseudoFamily` is an aiida-pseudo family that hosts only
this type. :func:`install_pyscf_gth_family` builds a family offline from the files bundled with PySCF.
"""

from __future__ import annotations

import io
import pathlib
import re
import tempfile
import typing

from aiida.common.exceptions import ParsingError
from aiida_pseudo.data.pseudo import PseudoPotentialData
from aiida_pseudo.groups.family import PseudoPotentialFamily

__all__ = (
    'GthPseudoData',
    'GthPseudoFamily',
    'get_pyscf_gth_file',
    'install_pyscf_gth_family',
    'parse_gth_content',
    'pyscf_gth_family_label',
    'split_gth_file',
)

#: CP2K keyword that separates the entries of a multi-element GTH file
BLOCK_SEPARATOR = '#PSEUDOPOTENTIAL'


def _content_lines(text: str) -> list[str]:
    """Non-empty, non-comment lines of a GTH file (``END`` markers dropped)."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith('#') or stripped == 'END':
            continue
        lines.append(stripped)
    return lines


def parse_gth_content(text: str) -> dict:
    """Parse one GTH pseudopotential entry (CP2K format).

    :returns: dict with ``element``, ``name`` (first name of the header, e.g. ``GTH-PBE-q4``),
        ``aliases`` (the other names, e.g. ``['GTH-PBE']``), ``functional`` (e.g. ``PBE``, or None),
        ``z_valence`` (int, sum of the electron counts per angular momentum) and ``n_elec`` (list).
    :raises ParsingError: when the text holds no entry, several entries, or a malformed header.
    """
    lines = _content_lines(text)
    if len(lines) < 3:
        raise ParsingError('not a GTH pseudopotential: fewer than three content lines')
    header = lines[0].split()
    if len(header) < 2 or not re.fullmatch(r'[A-Z][a-z]?', header[0]):
        raise ParsingError(f'not a GTH pseudopotential header: {lines[0]!r}')
    try:
        n_elec = [int(value) for value in lines[1].split()]
    except ValueError:
        raise ParsingError(f'invalid electron configuration line in GTH file: {lines[1]!r}') from None
    if not n_elec or min(n_elec) < 0:
        raise ParsingError(f'invalid electron configuration line in GTH file: {lines[1]!r}')
    headers = [line for line in lines[1:] if re.match(r'[A-Z][a-z]?\s+\S*GTH', line)]
    if headers:
        raise ParsingError(f'the file holds several GTH entries (also {headers[0]!r}); split it per element')
    name = header[1]
    match = re.match(r'GTH-([A-Za-z0-9]+)', name)
    return {
        'element': header[0],
        'name': name,
        'aliases': header[2:],
        'functional': match.group(1).upper() if match else None,
        'z_valence': int(sum(n_elec)),
        'n_elec': n_elec,
    }


class GthPseudoData(PseudoPotentialData):
    """A GTH pseudopotential for one element, in the CP2K format that PySCF and CP2K read.

    Attributes (besides aiida-pseudo's ``element`` and ``md5``): ``name`` (``GTH-PBE-q4``), ``aliases``,
    ``functional`` and ``z_valence``. The file is stored unchanged, so its md5 identifies it.
    """

    _key_name = 'name'
    _key_aliases = 'aliases'
    _key_functional = 'functional'
    _key_z_valence = 'z_valence'

    def set_file(
        self, source: str | pathlib.Path | typing.BinaryIO, filename: str | None = None, **kwargs
    ) -> None:
        """Set the file and parse the element, name, functional and valence charge from it.

        :raises ParsingError: if the content is not a single GTH pseudopotential entry.
        """
        source = self.prepare_source(source)
        try:
            text = source.read().decode('utf-8')
        except UnicodeDecodeError as exc:
            raise ParsingError(f'a GTH file must be text: {exc}') from exc
        info = parse_gth_content(text)
        source.seek(0)
        super().set_file(source, filename, **kwargs)
        self.element = info['element']
        self.base.attributes.set(self._key_name, info['name'])
        self.base.attributes.set(self._key_aliases, info['aliases'])
        self.base.attributes.set(self._key_functional, info['functional'])
        self.base.attributes.set(self._key_z_valence, info['z_valence'])

    @property
    def name(self) -> str | None:
        """Name of the potential as PySCF/CP2K spell it, e.g. ``GTH-PBE-q4``."""
        return self.base.attributes.get(self._key_name, None)

    @property
    def aliases(self) -> list[str]:
        return self.base.attributes.get(self._key_aliases, [])

    @property
    def functional(self) -> str | None:
        return self.base.attributes.get(self._key_functional, None)

    @property
    def z_valence(self) -> int | None:
        """Number of valence electrons of the pseudo-atom."""
        return self.base.attributes.get(self._key_z_valence, None)

    @property
    def pyscf_name(self) -> str:
        """``'Si GTH-PBE-q4'``: element and name, as in PySCF's data files."""
        return f'{self.element} {self.name}'


class GthPseudoFamily(PseudoPotentialFamily):
    """An aiida-pseudo family of GTH pseudopotentials (one per element)."""

    _pseudo_types = (GthPseudoData,)


# ---------------------------------------------------------------------------------------- PySCF
def get_pyscf_gth_file(functional: str = 'pbe') -> pathlib.Path:
    """Path of PySCF's bundled GTH file for ``functional`` (``pbe``, ``blyp``, ``pade``, ...).

    :raises ValueError: when PySCF ships no GTH file for that functional.
    """
    from pyscf.pbc.gto import pseudo

    directory = pathlib.Path(pseudo.__file__).parent
    path = directory / f'gth-{functional.lower()}.dat'
    if not path.is_file():
        available = sorted(p.stem.removeprefix('gth-') for p in directory.glob('gth-*.dat'))
        raise ValueError(f'PySCF ships no GTH file for functional {functional!r}; available: {available}')
    return path


def split_gth_file(text: str) -> list[tuple[dict, str]]:
    """Split a multi-element CP2K GTH file into ``(info, single-entry text)`` pairs, in file order."""
    entries = []
    for chunk in text.split(BLOCK_SEPARATOR)[1:]:
        lines = _content_lines(chunk)
        if not lines:
            continue
        content = (
            BLOCK_SEPARATOR
            + '\n'
            + '\n'.join(line.rstrip() for line in chunk.strip('\n').splitlines() if line.strip())
            + '\n'
        )
        entries.append((parse_gth_content(content), content))
    return entries


def _is_default(info: dict) -> bool:
    """PySCF's rule: the default entry of an element has a last name without a ``-qN`` suffix."""
    last = ([info['name']] + list(info['aliases']))[-1]
    return not re.fullmatch(r'q\d+', last.rsplit('-', 1)[-1])


def pyscf_gth_family_label(functional: str = 'pbe') -> str:
    """``GTH/PBE/pyscf-2.14.0``: the label of the family built from PySCF's files."""
    import pyscf

    return f'GTH/{functional.upper()}/pyscf-{pyscf.__version__}'


def install_pyscf_gth_family(
    functional: str = 'pbe', label: str | None = None
) -> tuple[GthPseudoFamily, bool]:
    """Install (or reuse) the GTH family of ``functional`` from the files bundled with PySCF, offline.

    The family holds PySCF's default entry of each element (the one PySCF loads for
    ``pseudo='gth-pbe'``), under its full name such as ``Si GTH-PBE-q4``. Identical files already in the
    database are reused (same md5), so re-running is cheap and creates nothing.

    :returns: ``(family, created)``.
    :raises ValueError: if a family of that label exists but its md5s differ from PySCF's files.
    """
    label = label or pyscf_gth_family_label(functional)
    path = get_pyscf_gth_file(functional)
    entries = [(info, content) for info, content in split_gth_file(path.read_text()) if _is_default(info)]

    existing = GthPseudoFamily.collection.find(filters={'label': label})
    if existing:
        family = existing[0]
        _check_family(family, entries)
        return family, False

    with tempfile.TemporaryDirectory() as dirpath:
        for info, content in entries:
            filename = f'{info["element"]}.{info["name"]}.gth'
            (pathlib.Path(dirpath) / filename).write_text(content)
        description = (
            f'GTH pseudopotentials ({functional.upper()}) shipped with PySCF {label.rsplit("-", 1)[-1]} '
            f'({path.name}); PySCF default entry per element.'
        )
        family = GthPseudoFamily.create_from_folder(pathlib.Path(dirpath), label, description=description)
    family.base.extras.set_many({'functional': functional.upper(), 'source': f'pyscf:{path.name}'})
    return family, True


def _check_family(family: GthPseudoFamily, entries: list[tuple[dict, str]]) -> None:
    from aiida.common.files import md5_from_filelike

    expected = {info['element']: md5_from_filelike(io.BytesIO(content.encode())) for info, content in entries}
    stored = {element: pseudo.md5 for element, pseudo in family.pseudos.items()}
    if stored != expected:
        differ = sorted(el for el in set(expected) | set(stored) if expected.get(el) != stored.get(el))
        raise ValueError(
            f'the family {family.label!r} exists but differs from the PySCF files for {differ[:10]}; '
            'delete it or choose another label'
        )
