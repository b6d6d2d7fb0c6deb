# Hand-written stubs for the compiled module, one per submodule (one per C++ area and
# python/bindings/bind_<area>.cc); checked by `python -m mypy.stubtest sparseforge._core` in
# .ci/run. Arrays are numpy; see the facade for shapes and dtypes.
from . import activation as activation
from . import calib as calib
from . import core as core
from . import format as format
from . import kernels as kernels
from . import kvcache as kvcache
from . import models as models
from . import moe as moe
from . import prune as prune
from . import runtime as runtime

__version__: str

class DTypeError(TypeError, ValueError): ...
class NumericalError(ArithmeticError): ...
