"""PyTorch side of graft: backbone registry, data sets, transfer-learning training and evaluation."""
