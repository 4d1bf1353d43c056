"""What every stage shares: content keys, the workspace and atomic writes, mixtures and their bounds, progress."""
