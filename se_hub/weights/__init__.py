from .checkpoint import (
    LAYOUTS,
    CheckpointLayoutError,
    checkpoint_filter_fn,
    convert_state_dict,
    detect_layout,
    load_checkpoint,
    read_checkpoint_file,
    register_layout,
    unwrap_state_dict,
)
