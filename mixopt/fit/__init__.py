"""`mixopt fit`, `predict`, `propose`, `verify`: regressions, the optimum, recommendations, external tables."""
