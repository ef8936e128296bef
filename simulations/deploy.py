"""Deployed fedhar on loopback: `fedhar server` + 2 `fedhar client` devices (TLS, real processes): round time,
client overhead, bytes, memory, `fedhar predict` latency; settings in simulations/configs/deploy.yaml."""

from fedhar.benchmarks.deploy import main

if __name__ == "__main__":
    main()
