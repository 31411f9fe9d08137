"""Transfer learning: a softmax head over the feature vector, run folders, reports."""
