"""Helpers shared by the command modules."""

from __future__ import annotations


def apply_options(options):
    """Decorate a click command with a list of ``click.option`` decorators, in order."""

    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco
