"""A model from what a user types: ``MODEL[.TAG]``, ``hf-hub:REPO``, ``local-dir:PATH`` or a
directory (se_hub, torch and timm are imported when these are called)."""


def checked(spec: str, directories: bool = True) -> str:
    """``spec`` with a plain directory as ``local-dir:`` (``directories``); an unknown model name
    fails here, with the names it might be."""
    from se_hub.factory import model_spec
    from se_hub.models.catalog import split_model_name
    if not spec.startswith(('hf-hub:', 'local-dir:')):
        spec = model_spec(spec) if directories else spec
        if not spec.startswith('local-dir:'):
            split_model_name(spec)
    return spec


def create(spec: str, pretrained: bool, directories: bool = True):
    """The model ``spec`` names (see :func:`checked`)."""
    from se_hub._compat import create_model
    return create_model(checked(spec, directories), pretrained=pretrained)
