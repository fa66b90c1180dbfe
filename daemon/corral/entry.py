"""The ``corral`` command (its console script, and ``python -m corral``).

``corral run`` runs in two images of one process (corral.supervisor.launch): the command line
(corral.cli), which loads the config and re-executes itself, then the supervisor. This module
tells them apart before anything is imported, so that the supervisor's image never loads the
command line's modules (argparse, PyYAML): they would stay in its memory for as long as it runs.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from corral.supervisor import launch

    if argv is None and launch.pending():
        return launch.serve()
    from corral.cli import main as command_line

    return command_line(argv)
