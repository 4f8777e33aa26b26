"""The core every chapter builds on: configuration, data, the model and its batched ensemble,
losses, metrics, decoding, exact enumeration, optimisation, training, evaluation, the
experiment runner, claims tables and storage. Nothing here knows about a chapter."""
