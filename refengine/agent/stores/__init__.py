"""Shared state behind one interface (base.py): SQLite, PostgreSQL or Redis."""
