"""Readers of weight artifacts, one module per format.

Contract shared by every reader: it returns ``dict[str, numpy.ndarray]`` keyed by the
TF-Slim variable name (``MobilenetV3/expanded_conv_3/depthwise/depthwise_weights``, no
``:0``), each array in TF layout (conv kernels HWIO, depthwise kernels ``[k, k, C, 1]``),
float32. Readers translate *formats*, never naming schemes beyond what the format forces
(Keras layer names, TFLite op graphs). A broken artifact raises
:class:`mobilevec.errors.WeightsError` naming the file and the variable; nothing is
half-returned. No pickle anywhere.
"""
