"""PLC simulators: the plant process model served over OPC UA, Modbus TCP and MQTT.
May import hazmon.plant, hazmon.reading, hazmon.errors and the gateway files' schema (the tag maps they serve).

- ``PlantModel`` (``hazmon.sim.model``): the deterministic process model, stepped by hand in tests, over
  its layout (``layout``), tag roles (``roles``), physics, instruments and weather;
- ``load_scenario`` (``hazmon.sim.scenario``): scenario files from ``simulators/``;
- ``serve`` (``hazmon.sim.service``): serves a site under a scenario on the endpoints that gateway
  configs describe, as an async context manager yielding a ``Simulation``;
- ``hazmon.sim.scale``: a synthetic N-tank plant for benchmarks.
"""

from hazmon.sim.model import PlantModel, Series
from hazmon.sim.scenario import Scenario, load_scenario, parse_scenario
from hazmon.sim.service import EndpointInfo, SimError, Simulation, free_port, serve

__all__ = [
    "EndpointInfo",
    "PlantModel",
    "Scenario",
    "Series",
    "SimError",
    "Simulation",
    "free_port",
    "load_scenario",
    "parse_scenario",
    "serve",
]
