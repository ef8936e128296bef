"""Every continual method on the shipped continual scenarios, over seeds: forgetting, BWT, FWT, bytes
(`python simulations/continual.py --help`); settings in simulations/configs/continual.yaml."""

from fedhar.benchmarks.continual import main

if __name__ == "__main__":
    main()
