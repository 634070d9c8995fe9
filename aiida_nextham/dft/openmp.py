"""OpenMP runtimes of PySCF and torch in one process: prevention, detection and containment.

PySCF's C libraries (``libnp_helper``, ``libcgto``, ``libcvhf``, ``libpbc``, ``libdft``, ...) are
loaded lazily, module by module, each with ``RTLD_LOCAL``; each links the OpenMP runtime bundled in
the wheel (``pyscf/lib/libgomp-<hash>.so``). The dynamic linker binds a library's ``omp_*`` and
``GOMP_*`` calls to the first definition in the process's *global* scope, and only falls back to the
library's own dependencies when there is none. ``import torch`` puts torch's own ``libgomp.so.1``
into the global scope (``libtorch_global_deps.so`` is loaded with ``RTLD_GLOBAL``). So when torch is
imported between two PySCF imports, PySCF ends up split over two OpenMP runtimes: the libraries
loaded before use PySCF's runtime, those loaded after use torch's. The split is fatal for results,
not only for speed: parallel regions in ``libdft``/``libpbc`` (multigrid density collocation, numint
contractions) reduce their per-thread buffers with ``NPomp_dsum_reduce_inplace`` from
``libnp_helper``; that helper asks *its* runtime for the thread number and team size, gets 0 and 1
from a thread of the other runtime, skips the reduction and the barriers, and every thread's
contribution except thread 0's is lost (eV errors in V_H and V_xc, SCFs that do not converge; with
one OpenMP thread nothing is lost).

Two defences, both here: (1) importing this module loads *every* native library PySCF ships at once
(:func:`load_native_libraries`, a few ms), so PySCF can no longer be split by what is imported later;
whether torch comes before PySCF (everything on torch's runtime) or after (everything on PySCF's),
one runtime serves all of PySCF. (2) If PySCF was already split before this module was imported
(``import pyscf``, then ``import torch``, then this module), :func:`openmp_runtimes` finds it by
reading which runtime each library's OpenMP symbols were actually bound to, and
:func:`openmp_guard`, used around every PySCF computation of the engine, runs those runtimes with one
thread (correct, slower; a :class:`OpenMPRuntimeWarning` says so once).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import struct
import sys
import warnings
from collections.abc import Iterator

__all__ = ['OpenMPRuntimeWarning', 'load_native_libraries', 'openmp_guard', 'openmp_runtimes']


class OpenMPRuntimeWarning(RuntimeWarning):
    """PySCF's native libraries are bound to several OpenMP runtimes; PySCF runs single-threaded."""


#: the OpenMP entry points whose binding decides which runtime a library runs in
_OPENMP_SYMBOLS = ('GOMP_parallel', 'omp_get_thread_num', 'omp_get_num_threads')
_RUNTIME_PREFIXES = ('libgomp', 'libiomp', 'libomp')
_split_reported = False


@functools.cache
def load_native_libraries() -> tuple[str, ...]:
    """Load every native library PySCF (and its extensions) ships, now and together; their paths.

    Called when this module is imported. PySCF itself loads them lazily, which lets an OpenMP runtime
    imported in between (torch) split them over two runtimes (see the module docstring).
    """
    import pyscf
    from pyscf import lib

    paths = []
    for folder in dict.fromkeys(os.path.join(path, 'lib') for path in pyscf.__path__):
        for path in sorted(glob.glob(os.path.join(folder, 'lib*.so'))):
            name = os.path.basename(path)[: -len('.so')]
            if name.startswith(_RUNTIME_PREFIXES):  # the runtime comes in as a dependency
                continue
            try:
                lib.load_library(name)
            except OSError:  # an optional extension library that cannot load here is not ours to fix
                continue
            paths.append(os.path.realpath(path))
    return tuple(paths)


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ('dli_fname', ctypes.c_char_p),
        ('dli_fbase', ctypes.c_void_p),
        ('dli_sname', ctypes.c_char_p),
        ('dli_saddr', ctypes.c_void_p),
    ]


@functools.cache
def _dl():
    """``dladdr`` and ``dlinfo`` of the C library (glibc), or None where they are missing."""
    for name in (None, 'libdl.so.2'):
        try:
            handle = ctypes.CDLL(name)
            dladdr, dlinfo = handle.dladdr, handle.dlinfo
        except (OSError, AttributeError):
            continue
        dladdr.argtypes, dladdr.restype = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)], ctypes.c_int
        dlinfo.argtypes, dlinfo.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p], ctypes.c_int
        return dladdr, dlinfo
    return None


def _object_of(address: int) -> str | None:
    """Real path of the loaded object that contains ``address``."""
    info = _DlInfo()
    if not address or not _dl()[0](address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


def _relocations(path: str, symbols: tuple[str, ...]) -> list[int]:
    """Offsets (from the load address) of the dynamic relocations of ``path`` against ``symbols``.

    ELF64 little-endian only (x86-64, aarch64); anything else gives no relocations.
    """
    with open(path, 'rb') as handle:
        header = handle.read(64)
        if len(header) < 64 or header[:4] != b'\x7fELF' or header[4] != 2 or header[5] != 1:
            return []
        (shoff,) = struct.unpack_from('<Q', header, 0x28)
        shentsize, shnum = struct.unpack_from('<HH', header, 0x3A)
        handle.seek(shoff)
        table = handle.read(shentsize * shnum)
        # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
        sections = [struct.unpack_from('<IIQQQQIIQQ', table, i * shentsize) for i in range(shnum)]

        def read(section):
            handle.seek(section[4])
            return handle.read(section[5])

        wanted, offsets = {name.encode() for name in symbols}, []
        for section in sections:
            if section[1] != 4 or sections[section[6]][1] != 11:  # SHT_RELA against SHT_DYNSYM
                continue
            dynsym = sections[section[6]]
            names, entries = read(sections[dynsym[6]]), read(dynsym)
            for offset, info, _ in struct.iter_unpack('<QQq', read(section)):
                if info >> 32:
                    (name,) = struct.unpack_from('<I', entries, (info >> 32) * 24)
                    if names[name : names.index(b'\0', name)] in wanted:
                        offsets.append(offset)
    return offsets


def _bound_runtimes(path: str) -> set[str]:
    """Objects that the OpenMP calls of the loaded library ``path`` were bound to by the dynamic linker."""
    handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)  # already loaded: the same object, nothing new
    link_map = ctypes.c_void_p()
    if _dl()[1](handle._handle, 2, ctypes.byref(link_map)) != 0:  # RTLD_DI_LINKMAP
        return set()
    base = ctypes.c_size_t.from_address(link_map.value).value  # link_map.l_addr
    found = set()
    for offset in _relocations(path, _OPENMP_SYMBOLS):
        target = _object_of(ctypes.c_void_p.from_address(base + offset).value or 0)
        if target is not None and target != path:  # not yet bound (lazy PLT stub): nothing to say
            found.add(target)
    return found


def openmp_runtimes() -> dict[str, tuple[str, ...]]:
    """For each PySCF native library that uses OpenMP: the runtime(s) its OpenMP calls are bound to.

    Read from the process itself (each library's relocated GOT entries, mapped back to the object
    that defines them), so it states what the code will call, not what should have been loaded.
    Empty where this cannot be inspected (not Linux/glibc, not ELF64 little-endian).
    """
    if not sys.platform.startswith('linux') or _dl() is None:
        return {}
    result = {}
    for path in load_native_libraries():
        try:
            runtimes = _bound_runtimes(path)
        except (OSError, ValueError, struct.error):
            continue
        if runtimes:
            result[os.path.basename(path)] = tuple(sorted(runtimes))
    return result


@functools.cache
def _split_runtimes() -> tuple[str, ...]:
    """The OpenMP runtimes PySCF is split over (empty when it uses one runtime or cannot be inspected)."""
    runtimes = sorted({runtime for bound in openmp_runtimes().values() for runtime in bound})
    return tuple(runtimes) if len(runtimes) > 1 else ()


@functools.cache
def _runtime_api(path: str):
    runtime = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    runtime.omp_get_max_threads.restype = ctypes.c_int
    runtime.omp_set_num_threads.argtypes = [ctypes.c_int]
    return runtime


@contextlib.contextmanager
def openmp_guard(threads: int | None = None) -> Iterator[None]:
    """Run PySCF with ``threads`` OpenMP threads (None: as set), correctly even if PySCF is split.

    When PySCF's libraries are bound to several OpenMP runtimes (see the module docstring), every
    one of those runtimes runs one thread inside the block; the thread counts are restored on exit.
    Thread counts are per calling thread in OpenMP, so use it in the thread that calls PySCF.
    """
    global _split_reported
    from pyscf import lib

    restore = []
    if threads is not None:
        restore.append((lib.num_threads, lib.num_threads()))
        lib.num_threads(threads)
    split = _split_runtimes()
    if split and not _split_reported:
        _split_reported = True
        bindings = '; '.join(f'{name} -> {", ".join(rt)}' for name, rt in sorted(openmp_runtimes().items()))
        warnings.warn(
            "PySCF's native libraries are bound to several OpenMP runtimes, because another runtime "
            "(usually torch's, put in the global symbol scope by `import torch`) was loaded after some "
            'of them and before others; threads of one runtime would lose work in the other, so PySCF '
            'runs with one OpenMP thread in this process. Import aiida_nextham.dft (or torch) before '
            f'pyscf to keep its threads. Bindings: {bindings}',
            OpenMPRuntimeWarning,
            stacklevel=3,
        )
    try:
        for path in split:
            runtime = _runtime_api(path)
            restore.append((runtime.omp_set_num_threads, runtime.omp_get_max_threads()))
            runtime.omp_set_num_threads(1)
        yield
    finally:
        for setter, value in reversed(restore):
            setter(value)


load_native_libraries()
