"""Stage 1: data-free distillation with generative pseudo replay (PRE-DFKD).

networks    - generator, VAE memory and student families, chosen from the input shape
criteria    - the loss terms (adversarial disagreement, BN statistics, class balance, one-hot, activation, KD)
memory      - replay: VAE (generative pseudo replay) or none
probes      - a fixed, data-free probe set for measuring teacher agreement
engine      - the training loop, checkpoints and resume
"""
