"""Tests for ragtune.ingest."""
