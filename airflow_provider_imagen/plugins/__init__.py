"""The Airflow UI plugin: an "Images" view of each DAG run and task instance (see ``gallery``)."""
