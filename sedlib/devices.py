"""Device selection for the commands that run a network outside Lightning (caching, prediction, scoring)."""

import torch


def resolve_device(accelerator: str) -> torch.device:
    """torch device of a Lightning-style accelerator name: auto (cuda when available), cpu, gpu | cuda[:i]."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if accelerator == "gpu" else accelerator)
