"""The fleet simulator: N device identities publishing realistic metrics through the broker.

``edgefleet simulate`` on the command line; in-process (tests, benchmarks)::

    truth = await run_simulation(SimOptions(devices=20, interval_s=0.2, duration_s=5, ...))

Modules: :mod:`~edgefleet.sim.model` (pure value generation), :mod:`~edgefleet.sim.device`
(one device's state machine), :mod:`~edgefleet.sim.runner` (asyncio, MQTT clients, truth
file), :mod:`~edgefleet.sim.truth` (the ground-truth record). See ``docs/simulator.md``.
"""

from edgefleet.sim.options import ScriptedEvent, SimOptions, demo_script
from edgefleet.sim.runner import run_simulation
from edgefleet.sim.truth import DeviceTruth, Truth

__all__ = [
    "DeviceTruth",
    "ScriptedEvent",
    "SimOptions",
    "Truth",
    "demo_script",
    "run_simulation",
]
