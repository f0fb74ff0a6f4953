"""Loaders the tasks share: embedded default data that ships inside pip dependencies, and users' data."""
