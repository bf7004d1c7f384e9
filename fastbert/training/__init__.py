"""Shared machinery of the ``fastbert.pretrain`` and ``fastbert.finetune`` entry points.

Modules, each importing only those listed before it:

* ``errors``       the exceptions a run stops with, and their exit codes (0 done, 1 replicas diverged, 2 bad
                   input, 3 NaN/Inf in training, 4 an output could not be written, 130 interrupted)
* ``distributed``  device choice, torchrun process group, collectives that are no-ops in one process
* ``determinism``  seeds, RNG snapshots and the (seed, epoch, rank) data order that make ``--resume`` exact
* ``checkpoint``   the files of a run folder: verified checkpoints, the exported model, log.jsonl
* ``loop``         optimiser, schedule, precision, the training loop with its NaN and Ctrl-C guards, ``fit``
* ``cli``          the shared options and ``run_cli``, which turns the errors into one line and an exit code

Importing the package imports nothing heavy; entry points import the modules they use.
"""
