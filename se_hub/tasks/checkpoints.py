"""Training checkpoints: reading one back (``last.pth`` / ``best.pth``, written atomically with
:func:`se_hub.files.save_atomic`) and the random state they carry for an exact resume."""
import os
import random
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .._compat import not_a_tensor_file


def load(path: Union[str, os.PathLike], map_location: Any = 'cpu') -> Dict[str, Any]:
    """A training checkpoint written by :func:`se_hub.files.save_atomic` (tensors and plain data only)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint not found: {path}') from None
    except Exception as e:  # noqa: BLE001 - named file, one line
        raise ValueError(not_a_tensor_file(path, e)) from e


def rng_state() -> Dict[str, Any]:
    """The random state of Python, numpy, torch (and CUDA) as plain data, which ``load`` reads
    with ``weights_only=True``."""
    import numpy as np
    np_state = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    import numpy as np
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state['torch'])
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
