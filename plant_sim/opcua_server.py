"""OPC UA server of the simulated plant (asyncua 2.1).

Address space (namespace ``tagmap.namespace_uri``)::

    Objects/
      <reactor>                  Object, NodeId ns;s=<reactor>
        <signal browse name>     Variable per tag-map signal, NodeId ns;s=<signal.opcua_node>
          EURange                Property, ua.Range(low, high)
          EngineeringUnits       Property, ua.EUInformation (UNECE code where known)

Decisions a client needs to know:

- **Data types.** float32 signals are ``Double``. Integer signals with ``scale == 1`` carry
  their natural type (uint16 -> ``UInt16``, int16 -> ``Int16``, int32 -> ``Int32``,
  uint32 -> ``UInt32``); scaled integers are ``Double`` (engineering value).
- **Writes accept any numeric scalar** (Python ``float`` and ``int`` both work, whatever
  variant type the client library picks). The value goes to ``Plant.write``, which does
  all validation; the resulting status maps to an OPC UA status code
  (:data:`WRITE_STATUS_CODES`): clamped writes answer ``GoodClamped`` and the node then shows
  the applied value. Non-numeric values, arrays, index ranges and writes with a bad status
  are ``BadTypeMismatch`` / ``BadWriteNotSupported``; other attributes of plant nodes
  are ``BadNotWritable``. Access levels are set per node (read-only measurements:
  ``CurrentRead``; writable: ``CurrentRead | CurrentWrite``) and read-only nodes refuse
  writes from every user, the admin included.
- **Timestamps.** ``SourceTimestamp = plant_epoch + plant_time_s`` (plant time, which runs
  ``speed`` times faster than the wall clock; ``plant_epoch`` is the wall time the server
  was built, UTC). ``ServerTimestamp`` is the wall clock. The ``plant_time_s`` tag carries
  plant time as a number too. Use source timestamps to order samples, the server timestamp
  to judge staleness.
- **Quality.** A NaN from the plant (failed sensor) is published as ``BadSensorFailure``
  with a null value.

The write hook: asyncua routes every client Write service call through
``InternalServer.attribute_service.write``; the value setter hook
(``set_attribute_value_setter``) cannot return a status code, so this module installs an
``AttributeService`` subclass that handles the plant's nodes and defers the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService
from asyncua.server.user_managers import UserManager

from conf.contract.tagmap import ModbusType, Signal, TagMap
from plant_sim.security import SERVER_APPLICATION_URI, verify_password

_log = logging.getLogger(__name__)

#: ``WriteStatus`` value -> OPC UA status code of the write.
WRITE_STATUS_CODES: Mapping[str, int] = {
    "ok": ua.StatusCodes.Good,
    "clamped": ua.StatusCodes.GoodClamped,
    "rejected_read_only": ua.StatusCodes.BadNotWritable,
    "rejected_unknown": ua.StatusCodes.BadNodeIdUnknown,
    "rejected_not_finite": ua.StatusCodes.BadOutOfRange,
    "rejected_out_of_range": ua.StatusCodes.BadOutOfRange,
    "rejected_type": ua.StatusCodes.BadTypeMismatch,
    "rejected_invalid_state": ua.StatusCodes.BadInvalidState,
}

_NUMERIC_VARIANTS = frozenset({
    ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
    ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64,
    ua.VariantType.Float, ua.VariantType.Double,
})
_INTEGER_VARIANT = {
    ModbusType.uint16: ua.VariantType.UInt16,
    ModbusType.int16: ua.VariantType.Int16,
    ModbusType.int32: ua.VariantType.Int32,
    ModbusType.uint32: ua.VariantType.UInt32,
}
# UNECE Rec. 20 common codes (OPC UA Part 8 EUInformation); -1 = unit id not available.
_UNECE = {"degC": "CEL", "s": "SEC", "1": "C62", "um": "4H", "1/s": "C97", "kg/min": "F31", "g/kg": "GK"}
_UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"


class PlantLike(Protocol):
    """What the servers need from :class:`plant_sim.plant.Plant`."""

    tagmap: TagMap

    @property
    def plant_time_s(self) -> float: ...

    def values(self) -> dict[str, float]: ...

    def write(self, name: str, value: float) -> Any: ...


@dataclasses.dataclass(frozen=True)
class OpcUaSecurity:
    """``sign_encrypt`` settings: Basic256Sha256 SignAndEncrypt, user name tokens only.

    Attributes:
        certificate: server certificate (DER or PEM).
        private_key: server private key (PEM).
        users: ``{username: password_hash}`` (see :mod:`plant_sim.security`).
    """

    certificate: Path
    private_key: Path
    users: Mapping[str, str]


class UsersFileUserManager(UserManager):
    """Accept a session only for a user name and password that match the users file."""

    _DUMMY_HASH = "pbkdf2_sha256$200000$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if not username or password is None:
            _log.warning("OPC UA session refused: no user name/password")
            return None
        stored = self._users.get(username)
        # Hash even for unknown users so the answer time does not reveal which names exist.
        ok = verify_password(password, stored if stored is not None else self._DUMMY_HASH)
        if stored is None or not ok:
            _log.warning("OPC UA session refused for user %r: wrong user name or password", username)
            return None
        return User(role=UserRole.User, name=username)


class _PlantAttributeService(AttributeService):
    """Routes client writes to plant nodes through ``Plant.write``; other nodes as usual."""

    def __init__(self, aspace: Any, owner: "PlantOpcUaServer") -> None:
        super().__init__(aspace)
        self._owner = owner

    async def write(self, params: ua.WriteParameters, user: User = User(role=UserRole.Admin)) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for wv in params.NodesToWrite:
            signal = self._owner.signal_for_node(wv.NodeId)
            if signal is None and self._aspace.get(wv.NodeId) is None:
                # asyncua answers BadUserAccessDenied here for non-admin users; the spec says:
                results.append(ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
            elif signal is None:
                other = ua.WriteParameters()
                other.NodesToWrite = [wv]
                results.extend(await super().write(other, user))
            else:
                results.append(await self._owner.handle_client_write(signal, wv))
        return results


class PlantOpcUaServer:
    """The plant's OPC UA endpoint. Use ``async with`` or ``start()`` / ``stop()``.

    Args:
        plant: the simulated plant (``tagmap``, ``plant_time_s``, ``values()``, ``write()``).
        host, port: where to listen (``opc.tcp://host:port``).
        security: None for insecure (NoSecurity + anonymous, logged as a warning), else
            :class:`OpcUaSecurity`.
        plant_epoch: wall time (UTC) that plant time 0 maps to in source timestamps.
    """

    def __init__(
        self,
        plant: PlantLike,
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        security: OpcUaSecurity | None = None,
        plant_epoch: datetime | None = None,
    ) -> None:
        self.plant = plant
        self.tagmap: TagMap = plant.tagmap
        self.host = host
        self.port = port
        self.security = security
        self.plant_epoch = plant_epoch or datetime.now(timezone.utc)
        self.endpoint = f"opc.tcp://{host}:{port}"
        self.namespace_index: int | None = None
        self._server: Server | None = None
        self._started = False
        self._by_node: dict[ua.NodeId, Signal] = {}
        self._node_of: dict[str, ua.NodeId] = {}
        self._variant: dict[str, ua.VariantType] = {}
        self.writes_accepted = 0
        self.writes_rejected = 0
        #: awaited after every accepted client write (``serve_plant`` republishes both servers,
        #: so status tags such as ``batch_state`` change at once); None = republish this server.
        self.after_write: Callable[[], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Build the address space and listen. Raises OSError if the port is taken."""
        user_manager = UsersFileUserManager(self.security.users) if self.security else None
        server = Server(user_manager=user_manager)
        self._server = server
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"xtalpilot plant simulator {self.tagmap.reactor}")
        server.product_uri = "urn:xtalpilot:plant"
        await server.set_application_uri(SERVER_APPLICATION_URI)
        if self.security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            server.set_identity_tokens([ua.AnonymousIdentityToken])
            _log.warning(
                "OPC UA server %s runs INSECURE: no encryption, anonymous clients may read and write "
                "setpoints. Use security=sign_encrypt outside loopback demos.",
                self.endpoint,
            )
        else:
            await server.load_certificate(str(self.security.certificate))
            await server.load_private_key(str(self.security.private_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.UserNameIdentityToken])
            _log.info("OPC UA server %s: Basic256Sha256 SignAndEncrypt, %d user(s)", self.endpoint,
                      len(self.security.users))
        await self._build_address_space(server)
        server.iserver.attribute_service = _PlantAttributeService(server.iserver.aspace, self)
        await self.publish()
        try:
            await server.start()
        except BaseException:
            self._server = None
            raise
        self._started = True
        _log.info("OPC UA server listening on %s (%d signals)", self.endpoint, len(self.tagmap))

    async def stop(self) -> None:
        """Close the listening socket and all sessions. Safe to call more than once."""
        server, self._server = self._server, None
        if server is not None and self._started:
            self._started = False
            await server.stop()

    async def __aenter__(self) -> "PlantOpcUaServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ address space

    async def _build_address_space(self, server: Server) -> None:
        idx = await server.register_namespace(self.tagmap.namespace_uri)
        self.namespace_index = idx
        reactor = await server.nodes.objects.add_object(
            ua.NodeId(self.tagmap.reactor, idx), ua.QualifiedName(self.tagmap.reactor, idx)
        )
        values = self.plant.values()
        for signal in self.tagmap:
            vtype = self._variant_type(signal)
            self._variant[signal.name] = vtype
            nodeid = ua.NodeId(signal.opcua_node, idx)
            initial = self._to_variant_value(values.get(signal.name, math.nan), vtype)
            var = await reactor.add_variable(
                nodeid,
                ua.QualifiedName(signal.name, idx),
                ua.Variant(initial if initial is not None else (0.0 if vtype is ua.VariantType.Double else 0), vtype),
                varianttype=vtype,
                datatype=ua.NodeId(vtype.value, 0),
            )
            level = ua.AccessLevel.CurrentRead.mask
            if signal.writable:
                level |= ua.AccessLevel.CurrentWrite.mask
            for attr in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
                await var.write_attribute(attr, ua.DataValue(ua.Variant(level, ua.VariantType.Byte)))
            desc = signal.description or signal.name
            await var.write_attribute(
                ua.AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(f"{desc} [{signal.unit}]"), ua.VariantType.LocalizedText)),
            )
            await var.add_property(
                idx, "EURange", ua.Range(Low=float(signal.low), High=float(signal.high)),
                datatype=ua.NodeId(ua.ObjectIds.Range),
            )
            await var.add_property(idx, "EngineeringUnits", _eu_information(signal.unit),
                                   datatype=ua.NodeId(ua.ObjectIds.EUInformation))
            self._by_node[nodeid] = signal
            self._node_of[signal.name] = nodeid

    @staticmethod
    def _variant_type(signal: Signal) -> ua.VariantType:
        if signal.is_integer and signal.modbus.scale == 1.0:
            return _INTEGER_VARIANT[signal.modbus.type]
        return ua.VariantType.Double

    @staticmethod
    def _to_variant_value(value: float, vtype: ua.VariantType) -> float | int | None:
        """Engineering value -> Python value for the variant, or None for a bad (NaN) value."""
        if value is None or not math.isfinite(value):
            return None
        if vtype is ua.VariantType.Double:
            return float(value)
        return int(round(value))

    def signal_for_node(self, nodeid: ua.NodeId) -> Signal | None:
        """The tag-map signal behind a node id of this server, or None."""
        return self._by_node.get(nodeid)

    def node_id(self, name: str) -> ua.NodeId:
        """NodeId of a signal (after ``start()``)."""
        return self._node_of[name]

    # ------------------------------------------------------------------ publishing

    def source_timestamp(self, plant_time_s: float) -> datetime:
        """Source timestamp for a value sampled at ``plant_time_s``."""
        return self.plant_epoch + timedelta(seconds=float(plant_time_s))

    async def publish(self, values: Mapping[str, float] | None = None, plant_time_s: float | None = None) -> None:
        """Write current plant values into the address space (server side, no network).

        Args:
            values: ``Plant.values()``; read from the plant when omitted.
            plant_time_s: plant time of ``values`` (``plant.plant_time_s`` when omitted).
        """
        server = self._server
        if server is None:
            return
        if values is None:
            values = self.plant.values()
        if plant_time_s is None:
            plant_time_s = self.plant.plant_time_s
        source_ts = self.source_timestamp(plant_time_s)
        server_ts = datetime.now(timezone.utc)
        aspace = server.iserver.aspace
        for name, nodeid in self._node_of.items():
            dv = self._data_value(name, values.get(name, math.nan), source_ts, server_ts)
            await aspace.write_attribute_value(nodeid, ua.AttributeIds.Value, dv)

    def _data_value(self, name: str, value: float, source_ts: datetime, server_ts: datetime) -> ua.DataValue:
        vtype = self._variant[name]
        py = self._to_variant_value(value, vtype)
        if py is None:
            return ua.DataValue(
                Value=ua.Variant(None, ua.VariantType.Null),
                StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                SourceTimestamp=source_ts,
                ServerTimestamp=server_ts,
            )
        return ua.DataValue(
            Value=ua.Variant(py, vtype),
            StatusCode=ua.StatusCode(ua.StatusCodes.Good),
            SourceTimestamp=source_ts,
            ServerTimestamp=server_ts,
        )

    # ------------------------------------------------------------------ client writes

    async def handle_client_write(self, signal: Signal, wv: ua.WriteValue) -> ua.StatusCode:
        """Validate one client write to a plant node through ``Plant.write``."""
        code = self._check_write_shape(signal, wv)
        if code is not None:
            self.writes_rejected += 1
            _log.info("OPC UA write to %s refused: %s", signal.name, ua.StatusCode(code).name)
            return ua.StatusCode(code)
        value = float(wv.Value.Value.Value)
        try:
            result = self.plant.write(signal.name, value)
        except Exception:  # a plant bug must not take the server down
            _log.exception("Plant.write(%s, %r) raised", signal.name, value)
            self.writes_rejected += 1
            return ua.StatusCode(ua.StatusCodes.BadInternalError)
        status = getattr(result.status, "value", str(result.status))
        code = WRITE_STATUS_CODES.get(status, ua.StatusCodes.BadInternalError)
        if not ua.StatusCode(code).is_good():
            self.writes_rejected += 1
            _log.info("OPC UA write %s=%r rejected: %s (%s)", signal.name, value, status, result.message)
            return ua.StatusCode(code)
        self.writes_accepted += 1
        applied = result.applied if result.applied is not None else value
        if status == "clamped":
            _log.info("OPC UA write %s=%r clamped to %r", signal.name, value, applied)
        # show the applied value (and its effects, e.g. batch_state) at once, not at the next tick
        await (self.after_write() if self.after_write is not None else self.publish())
        return ua.StatusCode(code)

    @staticmethod
    def _check_write_shape(signal: Signal, wv: ua.WriteValue) -> int | None:
        """Status code for a write that cannot reach the plant at all, else None."""
        if wv.AttributeId != ua.AttributeIds.Value or not signal.writable:
            return ua.StatusCodes.BadNotWritable
        if wv.IndexRange:
            return ua.StatusCodes.BadWriteNotSupported
        dv = wv.Value
        if dv is None or (dv.StatusCode is not None and not dv.StatusCode.is_good()):
            return ua.StatusCodes.BadTypeMismatch
        variant = dv.Value
        if (
            variant is None
            or variant.VariantType not in _NUMERIC_VARIANTS
            or variant.is_array
            or isinstance(variant.Value, (list, tuple, bool))
        ):
            return ua.StatusCodes.BadTypeMismatch
        return None


def _eu_information(unit: str) -> ua.EUInformation:
    code = _UNECE.get(unit)
    unit_id = -1
    if code is not None:
        unit_id = 0
        for ch in code:
            unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=_UNECE_NAMESPACE,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )
