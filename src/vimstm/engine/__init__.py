"""Evaluation, benchmarking, FLOPs, sweeps and training."""
