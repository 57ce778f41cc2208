"""Control policies over a frozen Motion VAE decoder: vectorised tasks, PPO, ONNX export (`python -m trainer.policy`)."""
