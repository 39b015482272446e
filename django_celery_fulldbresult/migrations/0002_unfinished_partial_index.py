"""A partial index on the records that have not finished, where the database has them.

Stale detection asks for unfinished records older than a window. Finished
records are nearly all of the table, so a plain index on the state cannot
serve ``status NOT IN (...)``; an index of the unfinished ones alone can, and
stays small. PostgreSQL and SQLite have partial indexes; MySQL and MariaDB do
not and use the (status, date_done) index instead. The index is not declared
in the model's Meta, where Django would warn (models.W037) on MySQL.
"""

from celery import states
from django.db import migrations, models

INDEX = models.Index(
    fields=["date_done"],
    name="fulldbresult_unfinished_idx",
    condition=~models.Q(status__in=sorted(states.READY_STATES)),
)


def create(apps, schema_editor):
    if schema_editor.connection.features.supports_partial_indexes:
        schema_editor.add_index(apps.get_model("django_celery_fulldbresult", "TaskResultMeta"), INDEX)


def drop(apps, schema_editor):
    if schema_editor.connection.features.supports_partial_indexes:
        schema_editor.remove_index(apps.get_model("django_celery_fulldbresult", "TaskResultMeta"), INDEX)


class Migration(migrations.Migration):
    dependencies = [("django_celery_fulldbresult", "0001_initial")]
    operations = [migrations.RunPython(create, drop, elidable=False)]
