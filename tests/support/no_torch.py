"""One torch blocker for the torch-free tests: source for a ``sitecustomize.py`` (or a
script's first lines) that makes the interpreter behave as if torch were not installed."""

import textwrap

# Hides torch from every import finder: `import torch` raises ModuleNotFoundError and
# importlib.util.find_spec("torch") is None, exactly as on a machine without torch.
SITECUSTOMIZE = textwrap.dedent(
    """
    import sys

    class _HideTorch:
        def __init__(self, finder):
            self._finder = finder

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                return None
            find = getattr(self._finder, "find_spec", None)
            return None if find is None else find(name, path, target)

        def __getattr__(self, attr):
            return getattr(self._finder, attr)

    sys.meta_path[:] = [_HideTorch(f) for f in sys.meta_path]
    """
)
