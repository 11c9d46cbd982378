"""Video input/output helpers."""
