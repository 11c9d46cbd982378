"""Data sources for rgtp: synthetic test videos and dataset helpers."""
