"""Worker stage: the Celery app built from Settings, its thin tasks, and beat for the scheduler process."""
