import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_CONTROL: _ClassVar[Role]
    ROLE_COMPUTE: _ClassVar[Role]

class StepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATE_UNSPECIFIED: _ClassVar[StepState]
    STEP_STATE_PENDING: _ClassVar[StepState]
    STEP_STATE_RUNNING: _ClassVar[StepState]
    STEP_STATE_DONE: _ClassVar[StepState]
    STEP_STATE_FAILED: _ClassVar[StepState]
    STEP_STATE_SKIPPED: _ClassVar[StepState]
    STEP_STATE_WAITING: _ClassVar[StepState]
ROLE_UNSPECIFIED: Role
ROLE_CONTROL: Role
ROLE_COMPUTE: Role
STEP_STATE_UNSPECIFIED: StepState
STEP_STATE_PENDING: StepState
STEP_STATE_RUNNING: StepState
STEP_STATE_DONE: StepState
STEP_STATE_FAILED: StepState
STEP_STATE_SKIPPED: StepState
STEP_STATE_WAITING: StepState

class Event(_message.Message):
    __slots__ = ("node", "seq", "step", "state", "message", "percent", "time", "final")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    node: str
    seq: int
    step: str
    state: StepState
    message: str
    percent: int
    time: _timestamp_pb2.Timestamp
    final: bool
    def __init__(self, node: _Optional[str] = ..., seq: _Optional[int] = ..., step: _Optional[str] = ..., state: _Optional[_Union[StepState, str]] = ..., message: _Optional[str] = ..., percent: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., final: _Optional[bool] = ...) -> None: ...

class InitRequest(_message.Message):
    __slots__ = ("role", "password", "address")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    role: Role
    password: str
    address: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., password: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("control", "password", "address", "timeout_seconds", "token")
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    control: str
    password: str
    address: str
    timeout_seconds: int
    token: str
    def __init__(self, control: _Optional[str] = ..., password: _Optional[str] = ..., address: _Optional[str] = ..., timeout_seconds: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("name", "state", "message", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    message: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "role", "address", "state", "message", "cert_serial", "cert_expires", "joined", "services", "last_seen", "nova", "microstackd_version", "api_version", "version_refused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CERT_EXPIRES_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    NOVA_FIELD_NUMBER: _ClassVar[int]
    MICROSTACKD_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_REFUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    address: str
    state: str
    message: str
    cert_serial: str
    cert_expires: _timestamp_pb2.Timestamp
    joined: _timestamp_pb2.Timestamp
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    last_seen: _timestamp_pb2.Timestamp
    nova: NovaHost
    microstackd_version: str
    api_version: str
    version_refused: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., cert_serial: _Optional[str] = ..., cert_expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., joined: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., nova: _Optional[_Union[NovaHost, _Mapping]] = ..., microstackd_version: _Optional[str] = ..., api_version: _Optional[str] = ..., version_refused: _Optional[str] = ...) -> None: ...

class NovaHost(_message.Message):
    __slots__ = ("compute_service", "hypervisor", "running_instances", "drained")
    COMPUTE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_FIELD_NUMBER: _ClassVar[int]
    RUNNING_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    compute_service: str
    hypervisor: str
    running_instances: int
    drained: bool
    def __init__(self, compute_service: _Optional[str] = ..., hypervisor: _Optional[str] = ..., running_instances: _Optional[int] = ..., drained: _Optional[bool] = ...) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("id", "control_name", "control_address", "bootstrap_port", "cluster_port", "ca_fingerprint", "ca_expires", "cas")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTROL_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTROL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_PORT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_PORT_FIELD_NUMBER: _ClassVar[int]
    CA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CA_EXPIRES_FIELD_NUMBER: _ClassVar[int]
    CAS_FIELD_NUMBER: _ClassVar[int]
    id: str
    control_name: str
    control_address: str
    bootstrap_port: int
    cluster_port: int
    ca_fingerprint: str
    ca_expires: _timestamp_pb2.Timestamp
    cas: _containers.RepeatedCompositeFieldContainer[TrustedCA]
    def __init__(self, id: _Optional[str] = ..., control_name: _Optional[str] = ..., control_address: _Optional[str] = ..., bootstrap_port: _Optional[int] = ..., cluster_port: _Optional[int] = ..., ca_fingerprint: _Optional[str] = ..., ca_expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cas: _Optional[_Iterable[_Union[TrustedCA, _Mapping]]] = ...) -> None: ...

class TrustedCA(_message.Message):
    __slots__ = ("fingerprint", "expires", "state")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    expires: _timestamp_pb2.Timestamp
    state: str
    def __init__(self, fingerprint: _Optional[str] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[str] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("cluster", "nodes", "local_node", "local_role", "bootstrap_fingerprint", "bootstrap_expires", "unfinished")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_NODE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ROLE_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_EXPIRES_FIELD_NUMBER: _ClassVar[int]
    UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    cluster: ClusterInfo
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    local_node: str
    local_role: Role
    bootstrap_fingerprint: str
    bootstrap_expires: _timestamp_pb2.Timestamp
    unfinished: _containers.RepeatedCompositeFieldContainer[Unfinished]
    def __init__(self, cluster: _Optional[_Union[ClusterInfo, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., local_node: _Optional[str] = ..., local_role: _Optional[_Union[Role, str]] = ..., bootstrap_fingerprint: _Optional[str] = ..., bootstrap_expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unfinished: _Optional[_Iterable[_Union[Unfinished, _Mapping]]] = ...) -> None: ...

class Unfinished(_message.Message):
    __slots__ = ("operation", "message", "command")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    operation: str
    message: str
    command: str
    def __init__(self, operation: _Optional[str] = ..., message: _Optional[str] = ..., command: _Optional[str] = ...) -> None: ...

class InitResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("node", "after_seq")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    node: str
    after_seq: int
    def __init__(self, node: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("node", "message")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    message: str
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class LaunchRequest(_message.Message):
    __slots__ = ("image", "name", "flavor", "availability_zone", "network", "key_name", "public_key", "no_wait", "ssh_timeout_seconds")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FLAVOR_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_ZONE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    KEY_NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    SSH_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    image: str
    name: str
    flavor: str
    availability_zone: str
    network: str
    key_name: str
    public_key: str
    no_wait: bool
    ssh_timeout_seconds: int
    def __init__(self, image: _Optional[str] = ..., name: _Optional[str] = ..., flavor: _Optional[str] = ..., availability_zone: _Optional[str] = ..., network: _Optional[str] = ..., key_name: _Optional[str] = ..., public_key: _Optional[str] = ..., no_wait: _Optional[bool] = ..., ssh_timeout_seconds: _Optional[int] = ...) -> None: ...

class ServerAddresses(_message.Message):
    __slots__ = ("network", "addresses")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    network: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class LaunchResult(_message.Message):
    __slots__ = ("name", "id", "host", "status", "addresses", "floating_ip", "ssh_ready", "ssh_banner", "active_after_seconds", "ssh_after_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    FLOATING_IP_FIELD_NUMBER: _ClassVar[int]
    SSH_READY_FIELD_NUMBER: _ClassVar[int]
    SSH_BANNER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SSH_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    host: str
    status: str
    addresses: _containers.RepeatedCompositeFieldContainer[ServerAddresses]
    floating_ip: str
    ssh_ready: bool
    ssh_banner: str
    active_after_seconds: float
    ssh_after_seconds: float
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., host: _Optional[str] = ..., status: _Optional[str] = ..., addresses: _Optional[_Iterable[_Union[ServerAddresses, _Mapping]]] = ..., floating_ip: _Optional[str] = ..., ssh_ready: _Optional[bool] = ..., ssh_banner: _Optional[str] = ..., active_after_seconds: _Optional[float] = ..., ssh_after_seconds: _Optional[float] = ...) -> None: ...

class LaunchResponse(_message.Message):
    __slots__ = ("event", "result")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    result: LaunchResult
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., result: _Optional[_Union[LaunchResult, _Mapping]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("name", "instance_timeout_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    instance_timeout_seconds: int
    def __init__(self, name: _Optional[str] = ..., instance_timeout_seconds: _Optional[int] = ...) -> None: ...

class MovedInstance(_message.Message):
    __slots__ = ("name", "id", "how", "host", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    how: str
    host: str
    status: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., how: _Optional[str] = ..., host: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("event", "moved")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    event: Event
    moved: _containers.RepeatedCompositeFieldContainer[MovedInstance]
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., moved: _Optional[_Iterable[_Union[MovedInstance, _Mapping]]] = ...) -> None: ...

class UndrainRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UndrainResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class ReconfigureRequest(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeOutcome(_message.Message):
    __slots__ = ("node", "result", "message")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node: str
    result: str
    message: str
    def __init__(self, node: _Optional[str] = ..., result: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ReconfigureResponse(_message.Message):
    __slots__ = ("event", "outcomes")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    event: Event
    outcomes: _containers.RepeatedCompositeFieldContainer[NodeOutcome]
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., outcomes: _Optional[_Iterable[_Union[NodeOutcome, _Mapping]]] = ...) -> None: ...

class RotateSecretsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotationStep(_message.Message):
    __slots__ = ("step", "result", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: str
    result: str
    message: str
    def __init__(self, step: _Optional[str] = ..., result: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RotateSecretsResponse(_message.Message):
    __slots__ = ("event", "steps")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    event: Event
    steps: _containers.RepeatedCompositeFieldContainer[RotationStep]
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[RotationStep, _Mapping]]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "ttl_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ttl_seconds: int
    def __init__(self, name: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "expires", "id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires: _timestamp_pb2.Timestamp
    id: str
    def __init__(self, token: _Optional[str] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "name", "state", "created", "expires")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: str
    created: _timestamp_pb2.Timestamp
    expires: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("id_or_name",)
    ID_OR_NAME_FIELD_NUMBER: _ClassVar[int]
    id_or_name: str
    def __init__(self, id_or_name: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class RotateCARequest(_message.Message):
    __slots__ = ("cluster_id",)
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    def __init__(self, cluster_id: _Optional[str] = ...) -> None: ...

class RotateCAResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("no_images", "proof")
    NO_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    no_images: bool
    proof: bytes
    def __init__(self, no_images: _Optional[bool] = ..., proof: _Optional[bytes] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("chunk", "done", "sha256", "manifest", "message")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    done: bool
    sha256: str
    manifest: str
    message: str
    def __init__(self, chunk: _Optional[bytes] = ..., done: _Optional[bool] = ..., sha256: _Optional[str] = ..., manifest: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("chunk", "done")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    done: bool
    def __init__(self, chunk: _Optional[bytes] = ..., done: _Optional[bool] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class KdfParams(_message.Message):
    __slots__ = ("name", "salt", "log2_n", "r", "p")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    LOG2_N_FIELD_NUMBER: _ClassVar[int]
    R_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    name: str
    salt: bytes
    log2_n: int
    r: int
    p: int
    def __init__(self, name: _Optional[str] = ..., salt: _Optional[bytes] = ..., log2_n: _Optional[int] = ..., r: _Optional[int] = ..., p: _Optional[int] = ...) -> None: ...

class BootstrapHello(_message.Message):
    __slots__ = ("version", "node_name", "address", "hostname", "cluster_port", "token_id", "microstackd_version", "api_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_PORT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    MICROSTACKD_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    node_name: str
    address: str
    hostname: str
    cluster_port: int
    token_id: str
    microstackd_version: str
    api_version: str
    def __init__(self, version: _Optional[int] = ..., node_name: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., cluster_port: _Optional[int] = ..., token_id: _Optional[str] = ..., microstackd_version: _Optional[str] = ..., api_version: _Optional[str] = ...) -> None: ...

class BootstrapChallenge(_message.Message):
    __slots__ = ("cluster_id", "kdf", "pake_message")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    KDF_FIELD_NUMBER: _ClassVar[int]
    PAKE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    kdf: KdfParams
    pake_message: bytes
    def __init__(self, cluster_id: _Optional[str] = ..., kdf: _Optional[_Union[KdfParams, _Mapping]] = ..., pake_message: _Optional[bytes] = ...) -> None: ...

class BootstrapResponse(_message.Message):
    __slots__ = ("pake_message", "csr_pem", "confirmation")
    PAKE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    pake_message: bytes
    csr_pem: bytes
    confirmation: bytes
    def __init__(self, pake_message: _Optional[bytes] = ..., csr_pem: _Optional[bytes] = ..., confirmation: _Optional[bytes] = ...) -> None: ...

class BootstrapResult(_message.Message):
    __slots__ = ("certificate_pem", "ca_certificate_pem", "control_name", "cluster_port", "confirmation")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CONTROL_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_PORT_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_certificate_pem: bytes
    control_name: str
    cluster_port: int
    confirmation: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., control_name: _Optional[str] = ..., cluster_port: _Optional[int] = ..., confirmation: _Optional[bytes] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("hello", "response")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    hello: BootstrapHello
    response: BootstrapResponse
    def __init__(self, hello: _Optional[_Union[BootstrapHello, _Mapping]] = ..., response: _Optional[_Union[BootstrapResponse, _Mapping]] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("challenge", "result")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    challenge: BootstrapChallenge
    result: BootstrapResult
    def __init__(self, challenge: _Optional[_Union[BootstrapChallenge, _Mapping]] = ..., result: _Optional[_Union[BootstrapResult, _Mapping]] = ...) -> None: ...

class EnrolRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class EnrolResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterStatusResponse(_message.Message):
    __slots__ = ("cluster", "nodes")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    cluster: ClusterInfo
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, cluster: _Optional[_Union[ClusterInfo, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("services", "microstackd_version", "api_version", "want_datagram_key")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    MICROSTACKD_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    WANT_DATAGRAM_KEY_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    microstackd_version: str
    api_version: str
    want_datagram_key: bool
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., microstackd_version: _Optional[str] = ..., api_version: _Optional[str] = ..., want_datagram_key: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("interval_seconds", "datagram_key", "datagram_key_id", "datagram_port", "datagram_key_seconds")
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DATAGRAM_KEY_FIELD_NUMBER: _ClassVar[int]
    DATAGRAM_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DATAGRAM_PORT_FIELD_NUMBER: _ClassVar[int]
    DATAGRAM_KEY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: int
    datagram_key: bytes
    datagram_key_id: int
    datagram_port: int
    datagram_key_seconds: int
    def __init__(self, interval_seconds: _Optional[int] = ..., datagram_key: _Optional[bytes] = ..., datagram_key_id: _Optional[int] = ..., datagram_port: _Optional[int] = ..., datagram_key_seconds: _Optional[int] = ...) -> None: ...

class HeartbeatsRequest(_message.Message):
    __slots__ = ("services", "microstackd_version", "api_version")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    MICROSTACKD_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    microstackd_version: str
    api_version: str
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., microstackd_version: _Optional[str] = ..., api_version: _Optional[str] = ...) -> None: ...

class HeartbeatsResponse(_message.Message):
    __slots__ = ("interval_seconds",)
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: int
    def __init__(self, interval_seconds: _Optional[int] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_certificates_pem")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATES_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_certificates_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_certificates_pem: _Optional[bytes] = ...) -> None: ...

class ApplyRoleRequest(_message.Message):
    __slots__ = ("role", "settings")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    role: str
    settings: _containers.ScalarMap[str, str]
    def __init__(self, role: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ApplyRoleResponse(_message.Message):
    __slots__ = ("step", "state", "message", "percent", "services", "final")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    step: str
    state: StepState
    message: str
    percent: int
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    final: bool
    def __init__(self, step: _Optional[str] = ..., state: _Optional[_Union[StepState, str]] = ..., message: _Optional[str] = ..., percent: _Optional[int] = ..., services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ..., final: _Optional[bool] = ...) -> None: ...

class GetServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ...) -> None: ...

class StopRoleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRoleResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStatus]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceStatus, _Mapping]]] = ...) -> None: ...

class TrustCARequest(_message.Message):
    __slots__ = ("ca_certificates_pem", "renew")
    CA_CERTIFICATES_PEM_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    ca_certificates_pem: bytes
    renew: bool
    def __init__(self, ca_certificates_pem: _Optional[bytes] = ..., renew: _Optional[bool] = ...) -> None: ...

class TrustCAResponse(_message.Message):
    __slots__ = ("cert_serial",)
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    cert_serial: str
    def __init__(self, cert_serial: _Optional[str] = ...) -> None: ...

class UpdateRevocationsRequest(_message.Message):
    __slots__ = ("crl_pem",)
    CRL_PEM_FIELD_NUMBER: _ClassVar[int]
    crl_pem: bytes
    def __init__(self, crl_pem: _Optional[bytes] = ...) -> None: ...

class UpdateRevocationsResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...
