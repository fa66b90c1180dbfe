"""Bundled demo apps: what ``make run`` serves, and what the tests and benchmark use."""
