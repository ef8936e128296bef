"""Deploy fedhar on devices: certificates, Flower SuperLink / SuperNode processes and the apps' runners."""
