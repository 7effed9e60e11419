"""distill_operator: the kopf operator that turns DistillJobs into KubeRay RayJobs."""
