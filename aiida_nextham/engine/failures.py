"""The named failure of engine commands: one ``Error: <name>: <message>`` line and its own exit code."""

from __future__ import annotations

import click

__all__ = ['EngineFailure']


class EngineFailure(click.ClickException):
    """A named failure: one ``Error:`` line and the command's exit code for it."""

    def __init__(self, name: str, message: str, exit_code: int):
        super().__init__(f'{name}: {" ".join(str(message).split())}')
        self.exit_code = exit_code
