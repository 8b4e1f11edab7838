-- Runs once, when the Postgres volume is first created: Prefect uses database `prefect`
-- (POSTGRES_DB), MLflow its own database, owned by the same role.
CREATE DATABASE mlflow;
