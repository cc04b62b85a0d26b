"""Sub-commands of `timm-coded`; each module exposes `register(subparsers)`."""
