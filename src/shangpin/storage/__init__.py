"""Persistence: product files, model directories and the operational database."""
