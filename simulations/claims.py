"""The method's claims, measured: low labels, few shots, convergence and transfer, centralized and federated, against
the baselines (`python simulations/claims.py --help`); settings in simulations/configs/claims.yaml."""

from fedhar.benchmarks.claims import main

if __name__ == "__main__":
    main()
