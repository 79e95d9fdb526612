"""Fine-tuning of the pretrained image tower: classification (1/10/100 % labels, linear probe or full) and
segmentation, with an explanation-guided attention-alignment option and a random-init baseline."""
