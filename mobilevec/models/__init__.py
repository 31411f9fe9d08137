"""The MobileNet family as data: architecture tables, building blocks, the torch module,
the registry of model names and the TF-Slim variable names."""
