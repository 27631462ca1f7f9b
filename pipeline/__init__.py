"""GKD-BMFI: gradient-guided knowledge distillation for object detectors, as a DVC pipeline."""
