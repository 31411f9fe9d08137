"""Images in: decoding and resizing (TF's rule), input expansion, class folders, augmentation."""
