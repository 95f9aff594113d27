"""Data: sources (hscodes, files, hub), splits, the small-vocabulary tokenizer and the LightningDataModule."""
