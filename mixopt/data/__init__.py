"""`mixopt sample`: read corpora (readers.py), build the tokenizer (tokenizer.py), draw the slices (sample.py)."""
