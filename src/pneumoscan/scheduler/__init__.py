"""Scheduler stage: watch the inbox, decide when files are complete, batch them and dispatch the batches."""
