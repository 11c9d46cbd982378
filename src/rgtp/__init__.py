"""Rollout-Guided Token Pruning."""
