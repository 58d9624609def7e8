"""Operating a model's whole life: its Prefect deployments and where it stands."""
