"""LightningModules: thin wrappers that train plain ``nn.Module``s."""
