"""The integration guide's module path for the serial runner; the code lives in `pi0.ript.env.serial_runner`."""

from pi0.ript.env.serial_runner import LIBEROEnvRunner

__all__ = ["LIBEROEnvRunner"]
