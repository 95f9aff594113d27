"""Knowledge distillation: losses (and, next, the teacher-logit cache)."""
