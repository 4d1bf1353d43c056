"""The experiment as data: the YAML schema (schema.py), reading it (load.py), validating numbers (validate.py)."""
