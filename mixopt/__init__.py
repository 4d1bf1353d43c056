"""mixopt: find the best data mixture for language-model pretraining."""

__version__ = "0.1.0"
