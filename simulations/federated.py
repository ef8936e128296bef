"""Federated vs centralized on HAPT with the strategies compared, and who holds which windows in a federation
(`python simulations/federated.py STUDY --help`); settings in simulations/configs/federated.yaml."""

from fedhar.benchmarks.federated import main

if __name__ == "__main__":
    main()
