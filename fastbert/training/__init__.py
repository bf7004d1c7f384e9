"""Shared machinery of the ``fastbert.pretrain`` and ``fastbert.finetune`` entry points.

Modules, each importing only those listed before it:

* ``errors``       ``CLIError``: bad input, one line on stderr and exit code 2
* ``distributed``  device choice, torchrun process group, collectives that are no-ops in one process
* ``determinism``  seeds, RNG snapshots and the (seed, epoch, rank) data order that make ``--resume`` exact
* ``checkpoint``   the files of a run folder: atomic checkpoints, the exported model, log.jsonl
* ``loop``         optimiser, schedule, precision, the training loop, ``fit``
* ``cli``          the shared options and ``run_cli``, which turns a CLIError into one line and exit code 2

Importing the package imports nothing heavy; entry points import the modules they use.
"""
