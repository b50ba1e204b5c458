"""Celery tasks and the ML: runners, backends, scoring."""
