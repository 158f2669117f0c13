"""Where idempotency records live. The database store is the default and the
source of truth; see ``database.py`` for how it claims keys."""
