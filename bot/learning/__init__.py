"""The learning loop's bot side: scheduled retraining."""
