"""distill_trainer: the on-policy distillation training loop (local Ray or a KubeRay cluster)."""
