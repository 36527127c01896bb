"""Serving the plant: the model's clock, the protocol endpoints, and the scenario's communication faults.

``serve(site, gateway_configs, scenario, ...)`` is an async context manager: it builds the model,
starts one endpoint per gateway config (an OPC UA server, one Modbus TCP server per host:port, an
MQTT publisher), pushes every model step to them, and yields a ``Simulation`` that lists what is
served where (ports actually bound) and exposes the model. Leaving the context stops everything.

Time: each step advances plant time by ``scenario.dt_s``; in real time a step is due every
``dt_s / speed`` wall seconds (late steps are caught up, at most 100 at once). With
``manual=True`` nothing moves until the caller ``await sim.advance(n)``, which is what tests use
to compare the wire with the model exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from hazmon.errors import InvalidFile, Problem
from hazmon.gateways.config import ModbusDevice, ModbusGateway, MqttGateway, OpcUaGateway
from hazmon.gateways.config import reference_problems as gateway_problems
from hazmon.plant.site import Site
from hazmon.reading import now_us
from hazmon.sim.modbus import ModbusEndpoint
from hazmon.sim.model import PlantModel
from hazmon.sim.mqtt import MqttEndpoint, SimMqttError
from hazmon.sim.opcua import OpcUaEndpoint
from hazmon.sim.scenario import Scenario

log = logging.getLogger(__name__)

GatewayConfig = OpcUaGateway | ModbusGateway | MqttGateway
MAX_CATCH_UP = 100


class SimError(Exception):
    """The simulator cannot serve: a port is taken, the broker is unreachable, a map is inconsistent."""


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    protocol: str  # opcua | modbus | mqtt
    gateway: str  # id of the gateway config it serves
    url: str
    host: str
    port: int
    devices: tuple[str, ...]  # Modbus devices (unit ids) or MQTT devices behind it
    tags: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """A port such that it and the next ``count - 1`` are free right now (scale mode's parts take
    consecutive ports)."""
    for _ in range(100):
        base = free_port(host)
        if base + count >= 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return base
    raise SimError(f"no run of {count} free ports on {host}")


def _pick(port: int | None, configured: int, host: str) -> int:
    if port is None:
        return configured
    return free_port(host) if port == 0 else port


class Simulation:
    """A running simulation: the model, the endpoints, and the gateway configs that reach them."""

    def __init__(
        self,
        model: PlantModel,
        configs: list[GatewayConfig],
        opcua: list[OpcUaEndpoint],
        modbus: list[ModbusEndpoint],
        mqtt: list[MqttEndpoint],
        speed: float,
    ) -> None:
        self.model = model
        self.configs = {c.id: c for c in configs}
        self.opcua = opcua
        self.modbus = modbus
        self.mqtt = mqtt
        self.speed = speed
        self.published_step = -1
        self._tick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._comm_state: frozenset[tuple[str, str]] = frozenset()

    # ------------------------------------------------------------ what is served

    @property
    def endpoints(self) -> list[EndpointInfo]:
        out: list[EndpointInfo] = []
        for ep in self.opcua:
            out.append(EndpointInfo("opcua", ep.config.id, ep.url, ep.host, ep.port, (), len(ep.tags)))
        for mb in self.modbus:
            gateways = {self._gateway_of_device(d.id) for d in mb.devices}
            out.append(
                EndpointInfo(
                    "modbus",
                    ",".join(sorted(gateways)),
                    mb.url,
                    mb.host,
                    mb.port,
                    tuple(f"{d.id}@unit{d.unit}" for d in mb.devices),
                    sum(len(d.tags) for d in mb.devices),
                )
            )
        for mq in self.mqtt:
            out.append(
                EndpointInfo("mqtt", mq.config.id, mq.url, mq.host, mq.port, tuple(mq.devices), len(mq.config.points))
            )
        return out

    def config(self, gateway_id: str) -> GatewayConfig:
        """The gateway config, rewritten to reach this simulation (ports actually bound)."""
        return self.configs[gateway_id]

    def _gateway_of_device(self, device_id: str) -> str:
        for c in self.configs.values():
            if isinstance(c, ModbusGateway) and any(d.id == device_id for d in c.devices):
                return c.id
        return "?"

    # ------------------------------------------------------------ time

    async def advance(self, steps: int = 1) -> None:
        """Steps the model ``steps`` times (applying communication faults as they come) and publishes."""
        async with self._lock:
            for _ in range(steps):
                self.model.step()
                await self._apply_comm()
            await self.publish()

    async def publish(self) -> None:
        model = self.model
        values, quality, ts = model.values, model.quality, now_us()
        for mb in self.modbus:
            mb.publish(values, quality)
        for op in self.opcua:
            await op.publish(values, quality, ts)
        for mq in self.mqtt:
            await mq.publish(values, quality, ts, model.step_count)
        self.published_step = model.step_count
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def wait_step(self, step: int, timeout: float = 10.0) -> None:
        """Waits until the values of model step ``step`` (or later) are on the wire."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.published_step < step:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"step {step} not published within {timeout} s (at {self.published_step})")
            tick = self._tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), remaining)

    async def run_clock(self) -> None:
        """Steps in real time (times ``speed``) forever; cancel to stop."""
        loop = asyncio.get_running_loop()
        period = self.model.dt / self.speed
        due = loop.time() + period
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late = int((loop.time() - due) / period)
            n = 1 + min(late, MAX_CATCH_UP)
            if late > MAX_CATCH_UP:
                log.warning("simulator %d steps behind real time; skipping ahead", late)
                due = loop.time()
            await self.advance(n)
            due += n * period

    # ------------------------------------------------------------ communication faults

    async def _apply_comm(self) -> None:
        state = frozenset(self.model.active_comm())
        if state == self._comm_state:
            return
        self._comm_state = state
        silent_units: dict[int, set[int]] = {i: set() for i in range(len(self.modbus))}
        down_modbus: set[int] = set()
        silent_mqtt: dict[int, set[str]] = {i: set() for i in range(len(self.mqtt))}
        down_mqtt: set[int] = set()
        no_comm: set[int] = set()
        down_opcua: set[int] = set()
        for kind, target in state:
            loss = kind == "comm_loss"
            for proto, i, part in self._resolve(target):
                if proto == "opcua":
                    (no_comm if loss else down_opcua).add(i)
                elif proto == "modbus":
                    if loss:
                        silent_units[i].update(part)  # type: ignore[arg-type]
                    else:
                        down_modbus.add(i)
                elif loss:
                    silent_mqtt[i].update(part)  # type: ignore[arg-type]
                else:
                    down_mqtt.add(i)
        for i, op in enumerate(self.opcua):
            op.no_comm = i in no_comm
            await self._set_running(op, i not in down_opcua)
        for i, mb in enumerate(self.modbus):
            mb.silence(silent_units[i])
            await self._set_running(mb, i not in down_modbus)
        for i, mq in enumerate(self.mqtt):
            mq.silence(silent_mqtt[i])
            await self._set_running(mq, i not in down_mqtt)

    @staticmethod
    async def _set_running(ep: OpcUaEndpoint | ModbusEndpoint | MqttEndpoint, up: bool) -> None:
        if isinstance(ep, MqttEndpoint):
            if up and not ep.enabled:
                log.info("scenario: MQTT publisher %s comes back", ep.config.id)
                try:
                    await ep.start()
                except SimMqttError as e:
                    log.warning("%s", e)
            elif not up and ep.enabled:
                log.info("scenario: MQTT publisher %s restarts", ep.config.id)
                await ep.stop()
            return
        if up and not ep.running:
            log.info("scenario: %s server %s comes back", ep.protocol, ep.url)
            await ep.start()
        elif not up and ep.running:
            log.info("scenario: %s server %s goes down", ep.protocol, ep.url)
            await ep.stop()

    def _resolve(self, target: str) -> list[tuple[str, int, set[int] | set[str]]]:
        """Endpoints a target names: (protocol, endpoint index, Modbus units or MQTT devices)."""
        proto, _, name = target.partition("/")
        out: list[tuple[str, int, set[int] | set[str]]] = []
        if proto == "opcua":
            out += [("opcua", i, set()) for i, op in enumerate(self.opcua) if name in ("", op.config.id)]
        elif proto == "modbus":
            for i, mb in enumerate(self.modbus):
                units = {d.unit for d in mb.devices if name in ("", d.id) or name == self._gateway_of_device(d.id)}
                if units:
                    out.append(("modbus", i, units))
        else:
            for i, mq in enumerate(self.mqtt):
                devices = {d for d in mq.devices if name in ("", d, mq.config.id)}
                if devices:
                    out.append(("mqtt", i, devices))
        return out


def _check(site: Site, configs: Sequence[GatewayConfig], scenario: Scenario) -> None:
    for c in configs:
        problems = gateway_problems(c, site)
        if problems:
            raise InvalidFile(f"gateway {c.id}", problems)
    served: dict[str, str] = {}
    dupes: list[Problem] = []
    for c in configs:
        ids = (
            [t.tag for t in c.tags]
            if isinstance(c, OpcUaGateway)
            else [t.tag for d in c.devices for t in d.tags]
            if isinstance(c, ModbusGateway)
            else list(c.points.values())
        )
        for tag in ids:
            if tag in served:
                dupes.append(Problem(f"gateway {c.id}", f"tag {tag} is also served by {served[tag]}"))
            served[tag] = c.id
    if dupes:
        raise InvalidFile("gateway configs", dupes)
    if scenario.site != site.id:
        raise InvalidFile(f"scenario {scenario.name}", [Problem("site", f"not {site.id!r}")])


async def _start_all(
    eps: Sequence[OpcUaEndpoint | ModbusEndpoint | MqttEndpoint], stack: contextlib.AsyncExitStack
) -> None:
    for ep in eps:
        try:
            await ep.start()
        except (OSError, RuntimeError) as e:
            raise SimError(f"{ep.protocol}: cannot serve on {ep.url}: {e}") from e
        except SimMqttError as e:
            raise SimError(str(e)) from e
        stack.push_async_callback(ep.stop)


@contextlib.asynccontextmanager
async def serve(
    site: Site,
    gateway_configs: Sequence[GatewayConfig],
    scenario: Scenario,
    *,
    seed: int = 0,
    speed: float = 1.0,
    manual: bool = False,
    opcua_port: int | None = None,
    modbus_port: int | None = None,
    mqtt_host: str | None = None,
    mqtt_port: int | None = None,
) -> AsyncIterator[Simulation]:
    """Serves ``site`` under ``scenario`` on the endpoints the gateway configs describe.

    Ports: ``None`` keeps the config's port, ``0`` picks a free one, any other number is used as
    is (``modbus_port`` puts every Modbus device on that one port). ``Simulation.config(id)``
    returns each config rewritten to the ports actually bound, ready for a gateway.
    """
    if speed <= 0:
        raise ValueError("speed must be > 0")
    _check(site, gateway_configs, scenario)
    model = PlantModel(site, scenario, seed)
    index = model.index
    configs: list[GatewayConfig] = []
    opcua: list[OpcUaEndpoint] = []
    mqtt: list[MqttEndpoint] = []
    by_port: dict[tuple[str, int], list[ModbusDevice]] = {}
    by_line: dict[str, list[ModbusDevice]] = {}
    shared_modbus: int | None = None
    for c in gateway_configs:
        if isinstance(c, OpcUaGateway):
            url = urlsplit(c.endpoint)
            host = url.hostname or "127.0.0.1"
            port = _pick(opcua_port, url.port or 4840, host)
            c = c.model_copy(update={"endpoint": f"opc.tcp://{host}:{port}{url.path}"})
            opcua.append(OpcUaEndpoint(site, c, index, host, port))
        elif isinstance(c, ModbusGateway):
            devices = []
            for d in c.devices:
                if d.serial is not None:  # RTU: served on the serial line the file names
                    devices.append(d)
                    by_line.setdefault(d.serial.port, []).append(d)
                    continue
                port = d.port
                if modbus_port is not None:
                    if shared_modbus is None:
                        shared_modbus = _pick(modbus_port, d.port, d.host)
                    port = shared_modbus
                d = d.model_copy(update={"port": port})
                devices.append(d)
                by_port.setdefault((d.host, port), []).append(d)
            c = c.model_copy(update={"devices": devices})
        else:
            host = mqtt_host or c.broker.host
            port = mqtt_port or c.broker.port
            c = c.model_copy(update={"broker": c.broker.model_copy(update={"host": host, "port": port})})
            mqtt.append(MqttEndpoint(site.enterprise.id, c, index, host, port))
        configs.append(c)
    try:
        modbus = [ModbusEndpoint(h, p, devs, index) for (h, p), devs in by_port.items()]
        modbus += [ModbusEndpoint("rtu", 0, devs, index, serial=devs[0].serial) for devs in by_line.values()]
    except ValueError as e:
        raise SimError(str(e)) from None
    sim = Simulation(model, configs, opcua, modbus, mqtt, speed)
    served = {"opcua": bool(opcua), "modbus": bool(by_port or by_line), "mqtt": bool(mqtt)}
    problems: list[Problem] = []
    for i, ev in scenario.comm_events():
        if sim._resolve(ev.target):
            continue
        if not served[ev.target.partition("/")[0]]:
            log.warning("scenario %s: events[%d] targets %s, which is not served: ignored", scenario.name, i, ev.target)
            continue
        problems.append(Problem(f"events[{i}].target", f"no served endpoint matches {ev.target!r}"))
    if problems:
        raise InvalidFile(f"scenario {scenario.name}", problems)

    async with contextlib.AsyncExitStack() as stack:
        for mb in modbus:
            mb.publish(model.values, model.quality)  # the image is ready before the first client
        await _start_all([*modbus, *opcua, *mqtt], stack)
        await sim._apply_comm()
        await sim.publish()
        if manual:
            yield sim
            return
        async with asyncio.TaskGroup() as tg:
            clock = tg.create_task(sim.run_clock(), name="sim-clock")
            try:
                yield sim
            finally:
                clock.cancel()
