"""The sections of a loopline spec, one module per noun; :mod:`loopline.spec.model` assembles them."""
