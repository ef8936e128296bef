"""What the benchmark recipes in ``simulations/`` run on: one runner (fresh-process runs of ``fedhar train`` /
``fedhar simulate``, reuse of finished runs, process-tree sampling, provenance), one way of writing results, and
each recipe's logic (``models``, ``federated``, ``footprint``, ``deploy``, ``continual``, ``robustness``).

``simulations/<recipe>.py`` is the entry point, ``simulations/configs/<recipe>.yaml`` its settings (the full run
and ``--quick``); docs/benchmarks.md lists the commands and the figures they produced.
"""
