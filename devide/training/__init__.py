"""The Accelerate trainer."""
