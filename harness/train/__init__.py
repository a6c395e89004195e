"""Draft training: self-distillation data from the target (datagen), and the one training loop (trainer)."""
