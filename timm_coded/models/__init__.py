"""The networks: `layers` (the coded block, stages, energy taps), `coded_resnext` (the model, its
architecture table and timm registrations), `binary` (per-class classifiers sliced from a model)."""
