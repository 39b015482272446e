"""Keep the full record of every Celery task in the Django database."""
