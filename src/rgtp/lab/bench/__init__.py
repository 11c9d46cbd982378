"""The offline benchmark: small models trained here, accuracy against compute, RGTP against its peers.

``rgtp bench detection|action|pedestrians`` (or :func:`run_bench`) evaluates every method of
:mod:`rgtp.lab.bench.methods` at several budgets on one test set and writes ``results.json``, ``table.md`` and
``plot.png``.
"""

from rgtp.lab.bench.tasks import TASKS, run_bench

__all__ = ["TASKS", "run_bench"]
