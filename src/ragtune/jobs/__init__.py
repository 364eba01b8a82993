"""jobs stage: what the service persists (files, fine-tuning jobs, keys) and the workers that
run long work. Routes and workers talk to the small protocols in :mod:`ragtune.jobs.store`;
SQLite plus a local folder is the default backend."""
