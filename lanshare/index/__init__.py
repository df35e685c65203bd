"""The SQL index of the repository: models, and opening the database with its schema migrated."""
