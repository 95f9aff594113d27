"""Export a trained student to deployable variants and write the bundle: pure functions, no Trainer needed."""
