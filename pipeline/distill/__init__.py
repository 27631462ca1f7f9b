"""Knowledge distillation: GKD-BMFI and the baselines it is compared with (docs/method.md)."""
