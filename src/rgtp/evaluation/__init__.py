"""Dataset evaluation: resumable result logs, sharding across processes, and the per-task evaluators."""
