"""PostgreSQL: the worker's state write as a PL/pgSQL function, planned once per connection.

Django's connections bind parameters on the client and never prepare: PostgreSQL
would parse and plan the 3 kB state statement at every state change. A PL/pgSQL
function's statements are planned once per connection, and the worker sends a
short call instead (``upsert.STATE_FUNCTION``). The body is
``upsert.state_function_sql()`` as it was when this migration was written (a test
keeps them equal): a change to the state write is a new function, with a new
number, in a new migration. Without this function (code deployed before
``migrate``), the writes fall back to the statement itself.

Other databases: nothing.
"""

from django.db import migrations

from django_celery_fulldbresult.migration_operations import PostgreSQLOnly

SIGNATURE = "fulldbresult_store_state_1(text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, bigint, timestamptz, timestamptz, bigint, text, text, text, text, timestamptz, timestamptz)"

CREATE = 'CREATE OR REPLACE FUNCTION fulldbresult_store_state_1(text, text, text, text, text, text, text, text, text, text, text, text, text, text, text, bigint, timestamptz, timestamptz, bigint, text, text, text, text, timestamptz, timestamptz) RETURNS void LANGUAGE plpgsql AS $$\nBEGIN\nINSERT INTO "django_celery_fulldbresult_taskresultmeta" ("task_id", "task", "status", "args", "kwargs", "not_retryable_reason", "content_type", "content_encoding", "result", "traceback", "meta", "hostname", "exchange", "routing_key", "queue", "priority", "eta", "expires", "retries", "parent_id", "root_id", "group_id", "periodic_task_name", "date_started", "date_done") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25) ON CONFLICT ("task_id") DO UPDATE SET "task" = COALESCE(EXCLUDED."task", "django_celery_fulldbresult_taskresultmeta"."task"), "status" = EXCLUDED."status", "args" = COALESCE(EXCLUDED."args", "django_celery_fulldbresult_taskresultmeta"."args"), "kwargs" = COALESCE(EXCLUDED."kwargs", "django_celery_fulldbresult_taskresultmeta"."kwargs"), "not_retryable_reason" = CASE WHEN EXCLUDED."args" IS NULL THEN "django_celery_fulldbresult_taskresultmeta"."not_retryable_reason" ELSE EXCLUDED."not_retryable_reason" END, "content_type" = EXCLUDED."content_type", "content_encoding" = EXCLUDED."content_encoding", "result" = EXCLUDED."result", "traceback" = EXCLUDED."traceback", "meta" = COALESCE(EXCLUDED."meta", "django_celery_fulldbresult_taskresultmeta"."meta"), "hostname" = COALESCE(EXCLUDED."hostname", "django_celery_fulldbresult_taskresultmeta"."hostname"), "exchange" = COALESCE(EXCLUDED."exchange", "django_celery_fulldbresult_taskresultmeta"."exchange"), "routing_key" = COALESCE(EXCLUDED."routing_key", "django_celery_fulldbresult_taskresultmeta"."routing_key"), "queue" = COALESCE(EXCLUDED."queue", "django_celery_fulldbresult_taskresultmeta"."queue"), "priority" = COALESCE(EXCLUDED."priority", "django_celery_fulldbresult_taskresultmeta"."priority"), "eta" = COALESCE(EXCLUDED."eta", "django_celery_fulldbresult_taskresultmeta"."eta"), "expires" = COALESCE(EXCLUDED."expires", "django_celery_fulldbresult_taskresultmeta"."expires"), "retries" = GREATEST(EXCLUDED."retries", "django_celery_fulldbresult_taskresultmeta"."retries"), "parent_id" = COALESCE(EXCLUDED."parent_id", "django_celery_fulldbresult_taskresultmeta"."parent_id"), "root_id" = COALESCE(EXCLUDED."root_id", "django_celery_fulldbresult_taskresultmeta"."root_id"), "group_id" = COALESCE(EXCLUDED."group_id", "django_celery_fulldbresult_taskresultmeta"."group_id"), "periodic_task_name" = COALESCE(EXCLUDED."periodic_task_name", "django_celery_fulldbresult_taskresultmeta"."periodic_task_name"), "date_started" = COALESCE(EXCLUDED."date_started", "django_celery_fulldbresult_taskresultmeta"."date_started"), "date_done" = EXCLUDED."date_done" WHERE EXCLUDED."status" IN (\'FAILURE\', \'REVOKED\', \'SUCCESS\') OR ("django_celery_fulldbresult_taskresultmeta"."status" NOT IN (\'FAILURE\', \'REVOKED\', \'SUCCESS\') AND (EXCLUDED."retries" > "django_celery_fulldbresult_taskresultmeta"."retries" OR (EXCLUDED."retries" = "django_celery_fulldbresult_taskresultmeta"."retries" AND (EXCLUDED."status" NOT IN (\'PENDING\', \'RETRY\') OR "django_celery_fulldbresult_taskresultmeta"."status" IN (\'PENDING\', \'RETRY\') OR (EXCLUDED."status" = \'RETRY\' AND (EXCLUDED."date_started" IS NULL OR EXCLUDED."date_started" = "django_celery_fulldbresult_taskresultmeta"."date_started"))))));\nEND\n$$'

DROP = f"DROP FUNCTION IF EXISTS {SIGNATURE}"


class Migration(migrations.Migration):
    dependencies = [("django_celery_fulldbresult", "0002_unfinished_partial_index")]
    # Lists: each statement is run whole (a string would be split at the body's semicolons).
    operations = [
        # The table's routing: created where the router migrates the model.
        PostgreSQLOnly([CREATE], [DROP], hints={"model_name": "taskresultmeta"}, elidable=False),
    ]
