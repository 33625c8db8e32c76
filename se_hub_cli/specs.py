"""A model from what a user types: ``MODEL[.TAG]``, ``hf-hub:REPO``, ``local-dir:PATH`` or a
directory (se_hub, torch and timm are imported when this is called)."""


def create(spec: str, pretrained: bool, directories: bool = True):
    """The model ``spec`` names; ``directories``: a plain directory is ``local-dir:`` (else an error
    unless it is a registered name)."""
    from se_hub._compat import create_model
    from se_hub.factory import model_spec
    from se_hub.models.catalog import split_model_name
    if not spec.startswith(('hf-hub:', 'local-dir:')):
        spec = model_spec(spec) if directories else spec
        if not spec.startswith('local-dir:'):
            split_model_name(spec)  # an unknown name fails here, with the names it might be
    return create_model(spec, pretrained=pretrained)
