"""Reporting: a run's tables and files (``records``) and what the console shows (``console``)."""
