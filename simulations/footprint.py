"""Simulation cost: wall time and peak memory of `fedhar simulate`, the engine's overhead per round, and loading
HAPT (`python simulations/footprint.py STUDY --help`); settings in simulations/configs/footprint.yaml."""

from fedhar.benchmarks.footprint import main

if __name__ == "__main__":
    main()
