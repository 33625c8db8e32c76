"""Research tools on SE networks: excitation statistics (:mod:`.excitations`), design-space sweeps
(:mod:`.ablate`) and SE retrofit onto pretrained SE-free networks (:mod:`.retrofit`)."""
