"""Proxy models: the spec and the stacked forward (model.py), the one training loop (train.py), checkpoints."""
