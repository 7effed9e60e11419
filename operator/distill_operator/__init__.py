"""distill_operator: the kopf operator that turns DistillJobs into KubeRay RayJobs.

    python -m distill_operator --help        # run it (docs/operator.md)

Module map: `builders/` (pure manifests: names, labels, ConfigMap, RayJob, grader, trainer
Service), `status` (RayJob status -> phase and conditions), `progress` (trainer metrics ->
status), `handlers` (kopf glue), `apply` (create-or-patch with the kubernetes client),
`metrics` (the operator's Prometheus metrics), `rbac` (every API call it makes), `__main__` (CLI).
"""
