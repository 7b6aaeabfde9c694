"""Data: formats, readers, conversion into the internal forms, tokenisation, collators."""
