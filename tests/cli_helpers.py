"""Running ``daskgd`` in the test process: its option checks need no interpreter of
their own (a subprocess costs 3-5 s of imports on a loaded machine), and the
``no_cluster`` fixture proves they come before any cluster starts."""

from __future__ import annotations

import pytest


class _NoClusterError(AssertionError):
    pass


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a LocalCluster or a Client is made: the options must be checked
    before any cluster starts."""

    def refuse(*args, **kwargs):
        raise _NoClusterError("a cluster was started before the options were checked")

    import distributed

    monkeypatch.setattr(distributed.LocalCluster, "__init__", refuse)
    monkeypatch.setattr(distributed.Client, "__init__", refuse)


def run_main(capsys, *arguments):
    """``daskgd ARGUMENTS`` in this process: (exit status, stdout, stderr)."""
    from daskgd.cli.app import main

    try:
        status = main([str(a) for a in arguments])
    except SystemExit as exit_:  # argparse's errors and --help
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
