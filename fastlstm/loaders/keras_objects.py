"""Read a live Keras model object (Keras 3, or Keras 2 / tf_keras) without saving it to disk.

The config comes from ``model.to_json()`` (available in Keras 2 and 3) and each layer's
weights from ``layer.get_weights()`` with names from ``layer.weights``, so the same
:mod:`keras_config` rules apply as for files.  Keras itself is never imported here: the
object carries everything, and its package's ``__version__`` picks the hard_sigmoid formula.
"""

from __future__ import annotations

import json
import sys

from ._common import describe_keys
from .keras_config import chain_from_config, spec_from_chain


def is_keras_model(obj) -> bool:
    mod = type(obj).__module__.split(".")[0]
    return mod in ("keras", "tf_keras", "tensorflow") and hasattr(obj, "to_json") and hasattr(obj, "get_layer")


def _version_of(obj):
    """The version of the Keras package the object's class comes from."""
    root = type(obj).__module__.split(".")[0]
    pkg = sys.modules.get(root)
    if root == "tensorflow":  # very old tf.keras objects: Keras 2 semantics
        return "2"
    return getattr(pkg, "__version__", None)


def spec_from_keras_object(model, source=None):
    source = source or f"Keras model {getattr(model, 'name', '')!r}"
    if not getattr(model, "built", True) or not model.weights:
        raise ValueError(f"{source}: the model has no weights yet (build it or call it on data first)")
    try:
        config = json.loads(model.to_json())
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{source}: cannot read the model's config ({exc}); subclassed models are not supported, "
            "use Sequential or Functional"
        ) from None
    chain, _ = chain_from_config(config, source)
    used = []

    def get_weights(entry):
        name = entry["config"].get("name")
        try:
            layer = model.get_layer(name)
        except ValueError:
            return []
        arrays = layer.get_weights()
        names = [getattr(w, "path", None) or w.name for w in layer.weights]
        if len(names) != len(arrays):
            raise ValueError(f"{source}: layer {name!r} reports {len(names)} variables but {len(arrays)} arrays")
        used.extend(id(w) for w in layer.weights)
        return list(zip(names, arrays))

    spec = spec_from_chain(chain, _version_of(model), get_weights, source)
    used = set(used)
    unused = [getattr(w, "path", None) or w.name for w in model.weights if id(w) not in used]
    if unused:
        raise ValueError(f"{source}: weights not used by any supported layer: {describe_keys(unused)}")
    return spec
