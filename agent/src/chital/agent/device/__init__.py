"""The ``Device`` port over ``/dev/chital`` and its adapters (``linux``: the real module, ``fake``)."""
