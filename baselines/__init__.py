"""Baseline offline-RL algorithms, one file each, on the shared `dql` core."""
