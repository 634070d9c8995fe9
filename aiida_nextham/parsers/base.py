"""What every parser of a ``nextham`` run needs: safe reads of retrieved files, JSON-safe results."""

from __future__ import annotations

import math

from aiida.parsers import Parser

__all__ = ('EngineParser', 'json_safe', 'last_line')


class EngineParser(Parser):
    """A parser of a ``nextham`` sub-command; it never raises: subclasses implement ``_parse`` and an
    unforeseen exception becomes the CalcJob's exit code named ``unexpected_exit_code``."""

    unexpected_exit_code = 'ERROR_UNEXPECTED_PARSER_EXCEPTION'

    def parse(self, **kwargs):
        try:
            self._relink_remote_folder()
        except Exception as exc:  # a repair attempt must not cost the results
            self.logger.warning(f'could not link the lost `remote_folder`: {type(exc).__name__}: {exc}')
        try:
            return self._parse(kwargs.get('retrieved_temporary_folder'))
        except Exception as exc:
            self.logger.error(f'unexpected problem while parsing: {type(exc).__name__}: {exc}')
            # ``filename`` fills the templates that name a file; the others ignore it
            return getattr(self.exit_codes, self.unexpected_exit_code).format(
                filename='(parser)', message=f'{type(exc).__name__}: {exc}'
            )

    def _relink_remote_folder(self) -> None:
        """Output ``remote_folder`` again when the engine lost it across a daemon restart.

        aiida-core 2.9 marks a CalcJob as uploaded as soon as its upload succeeds, but links the
        ``remote_folder`` output only at the next state change: a worker stopped in between resumes the
        job without uploading again and without that output, so the CalcJob lacks it and a work chain that
        exposes it fails (exit status 11). The working directory is recorded on the node: link it here.
        """
        from aiida import orm

        node = self.node
        if not node.is_stored or node.base.links.get_outgoing(link_label_filter='remote_folder').first():
            return
        workdir = node.get_remote_workdir()
        if workdir:
            self.logger.warning(f'the `remote_folder` output was lost (daemon restart): linking {workdir}')
            self.out('remote_folder', orm.RemoteData(computer=node.computer, remote_path=workdir))

    def _parse(self, temporary_folder: str | None):
        """Parse the retrieved files (and the retrieved temporary folder, when the CalcJob has one)."""
        raise NotImplementedError

    def _read_text(self, name: str, names: list[str]) -> str:
        """Content of the retrieved file ``name`` ('' when it is not among ``names`` or unreadable)."""
        if name not in names:
            return ''
        try:
            return self.retrieved.base.repository.get_object_content(name)
        except Exception:
            return ''


def last_line(text: str) -> str:
    """The last non-empty line of a log (for exit messages)."""
    lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
    return lines[-1] if lines else 'no error message'


def json_safe(value):
    """Replace NaN/inf by None recursively (a Dict node stores JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
