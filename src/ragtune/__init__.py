"""ragtune: RAG and true fine-tuning, locally, measured against each other on your own data."""

__version__ = "0.1.0"
