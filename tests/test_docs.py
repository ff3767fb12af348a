"""The documentation runs: every docstring example is a doctest, and every public class has one."""
import doctest
import importlib
import inspect
import pkgutil

import pytest
import torch

import unrolled3d
from unrolled3d import ops

MODULES = sorted(["unrolled3d"] + [m.name for m in pkgutil.walk_packages(unrolled3d.__path__, "unrolled3d.")
                                   if not m.name.endswith("__main__")])


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name, one_thread):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    backend = ops.get_backend()
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples of {name} failed"
    assert ops.get_backend() == backend, f"the examples of {name} changed the fused ops' backend"


def test_every_public_class_has_a_runnable_example():
    missing = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.isclass(obj) and obj.__module__ == name:
                doc = obj.__doc__ or ""
                if "Examples\n" not in doc or ">>>" not in doc:
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public classes without an Examples section with a doctest: {missing}"
