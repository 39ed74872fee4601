"""The ``simulated`` adapter kind: fake devices and providers for every channel, used by the
embedded demo, the engine's tests and the benchmarks (see README.md in this folder)."""

from adapters.simulated.adapter import SimulatedAdapter, SimulatedSettings, SimulatedStats

__all__ = ["SimulatedAdapter", "SimulatedSettings", "SimulatedStats"]
