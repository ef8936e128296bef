"""Run folders and the files in them: config, seed, versions and git revision next to every result, plots.

``fedhar train``, ``simulate`` and ``server`` write their runs through here (``run.RunDir``).
"""
