"""Robust aggregation against poisoned clients, and differential privacy: test macro-F1 and ε per setting
(`python simulations/robustness.py --help`); settings in simulations/configs/robustness.yaml."""

from fedhar.benchmarks.robustness import main

if __name__ == "__main__":
    main()
