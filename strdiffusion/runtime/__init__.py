"""How a job runs: GPU slots, stopping on notice (signals, SLURM time limits), the one-writer state lock,
numerics (TF32, determinism, mixed precision) and the environment jobs inherit from the workflow.

May import core, io and settings."""
