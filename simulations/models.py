"""Model comparison: LLM + LoRA vs baselines, the default-settings sweep, the seed study, seed ensembles and CPU
throughput (`python simulations/models.py STUDY --help`); settings in simulations/configs/models.yaml."""

from fedhar.benchmarks.models import main

if __name__ == "__main__":
    main()
