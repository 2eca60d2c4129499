"""companion: the shared code of the book *LLM Principles*.

Each module holds one concept of the book; the chapter notebooks import them.
"""

from companion.utils import get_device, set_seed

__version__ = "0.1.0"
__all__ = ["get_device", "set_seed", "__version__"]
