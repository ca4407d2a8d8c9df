"""One LightningModule per model family; base.py holds the shared contract."""
