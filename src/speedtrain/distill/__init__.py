"""Knowledge distillation: the KD loss, the teacher-logit cache and bringing a fine-tuned teacher to a run."""
