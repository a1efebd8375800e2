"""Training the region classifiers: R-CNN sampling, cached trunk features, member training loops."""
