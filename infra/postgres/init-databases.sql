-- Run once by the postgres image on an empty data folder (docker-entrypoint-initdb.d), as the
-- POSTGRES_USER (loopline), after POSTGRES_DB (prefect) is created: the other backends' databases.
CREATE DATABASE mlflow OWNER loopline;   -- MLflow's tracking store and model registry
CREATE DATABASE optuna OWNER loopline;   -- Optuna's studies (LOOPLINE_OPTUNA_STORAGE)
