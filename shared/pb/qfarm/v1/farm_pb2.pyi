from shared.pb.qfarm.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HostInfo(_message.Message):
    __slots__ = ("hostname", "cpu_model", "cores", "memory_bytes", "os", "arch")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    cpu_model: str
    cores: int
    memory_bytes: int
    os: str
    arch: str
    def __init__(self, hostname: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ...) -> None: ...

class AgentCapabilities(_message.Message):
    __slots__ = ("runtime", "host", "slots", "package_version", "protocol_version")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    runtime: _job_pb2.RuntimeInfo
    host: HostInfo
    slots: int
    package_version: str
    protocol_version: int
    def __init__(self, runtime: _Optional[_Union[_job_pb2.RuntimeInfo, _Mapping]] = ..., host: _Optional[_Union[HostInfo, _Mapping]] = ..., slots: _Optional[int] = ..., package_version: _Optional[str] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("device", "name", "capabilities", "running")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    device: str
    name: str
    capabilities: AgentCapabilities
    running: _containers.RepeatedCompositeFieldContainer[JobRef]
    def __init__(self, device: _Optional[str] = ..., name: _Optional[str] = ..., capabilities: _Optional[_Union[AgentCapabilities, _Mapping]] = ..., running: _Optional[_Iterable[_Union[JobRef, _Mapping]]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("agent_id", "heartbeat_interval_s", "lease_ttl_s", "package_version", "protocol_version", "agent_secret")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_interval_s: float
    lease_ttl_s: float
    package_version: str
    protocol_version: int
    agent_secret: str
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., lease_ttl_s: _Optional[float] = ..., package_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., agent_secret: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "running", "free_slots", "busy_slots")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    BUSY_SLOTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    running: _containers.RepeatedCompositeFieldContainer[JobRef]
    free_slots: int
    busy_slots: int
    def __init__(self, agent_id: _Optional[str] = ..., running: _Optional[_Iterable[_Union[JobRef, _Mapping]]] = ..., free_slots: _Optional[int] = ..., busy_slots: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("cancel",)
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    cancel: _containers.RepeatedCompositeFieldContainer[JobRef]
    def __init__(self, cancel: _Optional[_Iterable[_Union[JobRef, _Mapping]]] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("agent_id", "max_jobs", "wait_s")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    max_jobs: int
    wait_s: float
    def __init__(self, agent_id: _Optional[str] = ..., max_jobs: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("sha256", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("artifact", "data", "offset")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    artifact: _job_pb2.Artifact
    data: bytes
    offset: int
    def __init__(self, artifact: _Optional[_Union[_job_pb2.Artifact, _Mapping]] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class UploadArtifactResponse(_message.Message):
    __slots__ = ("artifact", "already_present")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    artifact: _job_pb2.Artifact
    already_present: bool
    def __init__(self, artifact: _Optional[_Union[_job_pb2.Artifact, _Mapping]] = ..., already_present: _Optional[bool] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("agent_id", "result", "fp32_outputs")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FP32_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    result: _job_pb2.DeviceResult
    fp32_outputs: _job_pb2.Artifact
    def __init__(self, agent_id: _Optional[str] = ..., result: _Optional[_Union[_job_pb2.DeviceResult, _Mapping]] = ..., fp32_outputs: _Optional[_Union[_job_pb2.Artifact, _Mapping]] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("more_jobs", "result")
    MORE_JOBS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    more_jobs: int
    result: ReportResultRequest
    def __init__(self, more_jobs: _Optional[int] = ..., result: _Optional[_Union[ReportResultRequest, _Mapping]] = ...) -> None: ...

class WorkResponse(_message.Message):
    __slots__ = ("jobs", "result_of", "result")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    RESULT_OF_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    result_of: JobRef
    result: ReportResultResponse
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., result_of: _Optional[_Union[JobRef, _Mapping]] = ..., result: _Optional[_Union[ReportResultResponse, _Mapping]] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MissingArtifactsRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class MissingArtifactsResponse(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class SubmitCampaignRequest(_message.Message):
    __slots__ = ("spec_json",)
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    def __init__(self, spec_json: _Optional[str] = ...) -> None: ...

class SubmitCampaignResponse(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "name", "device", "state", "jobs", "last_heartbeat_age_s", "capabilities", "free_slots", "busy_slots")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    BUSY_SLOTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    device: str
    state: str
    jobs: _containers.RepeatedScalarFieldContainer[str]
    last_heartbeat_age_s: float
    capabilities: AgentCapabilities
    free_slots: int
    busy_slots: int
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., device: _Optional[str] = ..., state: _Optional[str] = ..., jobs: _Optional[_Iterable[str]] = ..., last_heartbeat_age_s: _Optional[float] = ..., capabilities: _Optional[_Union[AgentCapabilities, _Mapping]] = ..., free_slots: _Optional[int] = ..., busy_slots: _Optional[int] = ...) -> None: ...

class DeviceProgress(_message.Message):
    __slots__ = ("device", "total", "done", "queued", "leased", "agents")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    device: str
    total: int
    done: int
    queued: int
    leased: int
    agents: int
    def __init__(self, device: _Optional[str] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., queued: _Optional[int] = ..., leased: _Optional[int] = ..., agents: _Optional[int] = ...) -> None: ...

class CampaignStatus(_message.Message):
    __slots__ = ("campaign_id", "name", "state", "message", "devices", "created_at", "updated_at")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    name: str
    state: str
    message: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceProgress]
    created_at: float
    updated_at: float
    def __init__(self, campaign_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., message: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceProgress, _Mapping]]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ServerStats(_message.Message):
    __slots__ = ("artifact_bytes_sent", "artifact_bytes_received", "job_bytes_sent", "results_accepted", "results_duplicate")
    ARTIFACT_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    JOB_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    artifact_bytes_sent: int
    artifact_bytes_received: int
    job_bytes_sent: int
    results_accepted: int
    results_duplicate: int
    def __init__(self, artifact_bytes_sent: _Optional[int] = ..., artifact_bytes_received: _Optional[int] = ..., job_bytes_sent: _Optional[int] = ..., results_accepted: _Optional[int] = ..., results_duplicate: _Optional[int] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("agents", "campaigns", "stats")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    campaigns: _containers.RepeatedCompositeFieldContainer[CampaignStatus]
    stats: ServerStats
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ..., campaigns: _Optional[_Iterable[_Union[CampaignStatus, _Mapping]]] = ..., stats: _Optional[_Union[ServerStats, _Mapping]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class ReportFile(_message.Message):
    __slots__ = ("path", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("state", "files")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    state: str
    files: _containers.RepeatedCompositeFieldContainer[ReportFile]
    def __init__(self, state: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ReportFile, _Mapping]]] = ...) -> None: ...

class CancelCampaignRequest(_message.Message):
    __slots__ = ("campaign_id",)
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    def __init__(self, campaign_id: _Optional[str] = ...) -> None: ...

class CancelCampaignResponse(_message.Message):
    __slots__ = ("state", "jobs_cancelled")
    STATE_FIELD_NUMBER: _ClassVar[int]
    JOBS_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    state: str
    jobs_cancelled: int
    def __init__(self, state: _Optional[str] = ..., jobs_cancelled: _Optional[int] = ...) -> None: ...
