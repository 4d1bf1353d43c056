"""`mixopt sweep` and `mixopt eval`: design and plan the runs, the store, the work units, running and re-evaluating."""
