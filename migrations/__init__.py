"""lanshare's Alembic migrations, installed as the package ``lanshare.migrations``."""
