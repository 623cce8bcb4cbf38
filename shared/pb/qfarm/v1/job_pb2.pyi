from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuantMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANT_MODE_UNSPECIFIED: _ClassVar[QuantMode]
    QUANT_MODE_STATIC: _ClassVar[QuantMode]
    QUANT_MODE_DYNAMIC: _ClassVar[QuantMode]

class QuantFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANT_FORMAT_UNSPECIFIED: _ClassVar[QuantFormat]
    QUANT_FORMAT_QDQ: _ClassVar[QuantFormat]
    QUANT_FORMAT_QOPERATOR: _ClassVar[QuantFormat]

class CalibrationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALIBRATION_METHOD_UNSPECIFIED: _ClassVar[CalibrationMethod]
    CALIBRATION_METHOD_MINMAX: _ClassVar[CalibrationMethod]
    CALIBRATION_METHOD_ENTROPY: _ClassVar[CalibrationMethod]
    CALIBRATION_METHOD_PERCENTILE: _ClassVar[CalibrationMethod]

class QuantType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANT_TYPE_UNSPECIFIED: _ClassVar[QuantType]
    QUANT_TYPE_UINT8: _ClassVar[QuantType]
    QUANT_TYPE_INT8: _ClassVar[QuantType]
    QUANT_TYPE_UINT16: _ClassVar[QuantType]
    QUANT_TYPE_INT16: _ClassVar[QuantType]

class ResultStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_STATUS_UNSPECIFIED: _ClassVar[ResultStatus]
    RESULT_STATUS_OK: _ClassVar[ResultStatus]
    RESULT_STATUS_CRASH: _ClassVar[ResultStatus]
    RESULT_STATUS_UNSUPPORTED: _ClassVar[ResultStatus]
QUANT_MODE_UNSPECIFIED: QuantMode
QUANT_MODE_STATIC: QuantMode
QUANT_MODE_DYNAMIC: QuantMode
QUANT_FORMAT_UNSPECIFIED: QuantFormat
QUANT_FORMAT_QDQ: QuantFormat
QUANT_FORMAT_QOPERATOR: QuantFormat
CALIBRATION_METHOD_UNSPECIFIED: CalibrationMethod
CALIBRATION_METHOD_MINMAX: CalibrationMethod
CALIBRATION_METHOD_ENTROPY: CalibrationMethod
CALIBRATION_METHOD_PERCENTILE: CalibrationMethod
QUANT_TYPE_UNSPECIFIED: QuantType
QUANT_TYPE_UINT8: QuantType
QUANT_TYPE_INT8: QuantType
QUANT_TYPE_UINT16: QuantType
QUANT_TYPE_INT16: QuantType
RESULT_STATUS_UNSPECIFIED: ResultStatus
RESULT_STATUS_OK: ResultStatus
RESULT_STATUS_CRASH: ResultStatus
RESULT_STATUS_UNSUPPORTED: ResultStatus

class Artifact(_message.Message):
    __slots__ = ("sha256", "size_bytes", "kind", "name")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    kind: str
    name: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class QuantSettings(_message.Message):
    __slots__ = ("mode", "format", "per_channel", "reduce_range", "calibrate", "activation_type", "weight_type", "calibration_images", "recipe")
    class RecipeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    REDUCE_RANGE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_IMAGES_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    mode: QuantMode
    format: QuantFormat
    per_channel: bool
    reduce_range: bool
    calibrate: CalibrationMethod
    activation_type: QuantType
    weight_type: QuantType
    calibration_images: int
    recipe: _containers.ScalarMap[str, str]
    def __init__(self, mode: _Optional[_Union[QuantMode, str]] = ..., format: _Optional[_Union[QuantFormat, str]] = ..., per_channel: _Optional[bool] = ..., reduce_range: _Optional[bool] = ..., calibrate: _Optional[_Union[CalibrationMethod, str]] = ..., activation_type: _Optional[_Union[QuantType, str]] = ..., weight_type: _Optional[_Union[QuantType, str]] = ..., calibration_images: _Optional[int] = ..., recipe: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "base_model", "model", "settings", "excluded_nodes", "int16_nodes")
    ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_NODES_FIELD_NUMBER: _ClassVar[int]
    INT16_NODES_FIELD_NUMBER: _ClassVar[int]
    id: str
    base_model: Artifact
    model: Artifact
    settings: QuantSettings
    excluded_nodes: _containers.RepeatedScalarFieldContainer[str]
    int16_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., base_model: _Optional[_Union[Artifact, _Mapping]] = ..., model: _Optional[_Union[Artifact, _Mapping]] = ..., settings: _Optional[_Union[QuantSettings, _Mapping]] = ..., excluded_nodes: _Optional[_Iterable[str]] = ..., int16_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class EvalData(_message.Message):
    __slots__ = ("inputs", "labels", "input_name", "latency_runs", "task", "metric", "data_layout")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RUNS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DATA_LAYOUT_FIELD_NUMBER: _ClassVar[int]
    inputs: Artifact
    labels: Artifact
    input_name: str
    latency_runs: int
    task: str
    metric: str
    data_layout: str
    def __init__(self, inputs: _Optional[_Union[Artifact, _Mapping]] = ..., labels: _Optional[_Union[Artifact, _Mapping]] = ..., input_name: _Optional[str] = ..., latency_runs: _Optional[int] = ..., task: _Optional[str] = ..., metric: _Optional[str] = ..., data_layout: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "attempt", "device", "candidate", "data", "fp32_outputs", "reference", "fp32_model")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FP32_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    FP32_MODEL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    device: str
    candidate: Candidate
    data: EvalData
    fp32_outputs: Artifact
    reference: bool
    fp32_model: Artifact
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., device: _Optional[str] = ..., candidate: _Optional[_Union[Candidate, _Mapping]] = ..., data: _Optional[_Union[EvalData, _Mapping]] = ..., fp32_outputs: _Optional[_Union[Artifact, _Mapping]] = ..., reference: _Optional[bool] = ..., fp32_model: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("runtime", "version", "providers", "options")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    version: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    options: str
    def __init__(self, runtime: _Optional[str] = ..., version: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., options: _Optional[str] = ...) -> None: ...

class OutputFidelity(_message.Message):
    __slots__ = ("name", "sqnr_db", "cosine", "kl", "iou")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SQNR_DB_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    name: str
    sqnr_db: float
    cosine: float
    kl: float
    iou: float
    def __init__(self, name: _Optional[str] = ..., sqnr_db: _Optional[float] = ..., cosine: _Optional[float] = ..., kl: _Optional[float] = ..., iou: _Optional[float] = ...) -> None: ...

class DeviceResult(_message.Message):
    __slots__ = ("job_id", "attempt", "candidate_id", "device", "status", "crash_cause", "stderr_tail", "top1_agreement", "top5_agreement", "top1_accuracy", "size_bytes", "latency_ms_p50", "latency_ms_p90", "num_images", "runtime", "wall_seconds", "fp32_latency_ms_p50", "latency_ratio_vs_fp32", "latency_ratio_p10", "latency_ratio_p90", "task", "output_sqnr_db", "cosine", "kl_divergence", "iou", "outputs", "user_metrics")
    class UserMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CRASH_CAUSE_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    TOP5_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    TOP1_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_P90_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FP32_LATENCY_MS_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RATIO_VS_FP32_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RATIO_P10_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RATIO_P90_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SQNR_DB_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    KL_DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    USER_METRICS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    candidate_id: str
    device: str
    status: ResultStatus
    crash_cause: str
    stderr_tail: str
    top1_agreement: float
    top5_agreement: float
    top1_accuracy: float
    size_bytes: int
    latency_ms_p50: float
    latency_ms_p90: float
    num_images: int
    runtime: RuntimeInfo
    wall_seconds: float
    fp32_latency_ms_p50: float
    latency_ratio_vs_fp32: float
    latency_ratio_p10: float
    latency_ratio_p90: float
    task: str
    output_sqnr_db: float
    cosine: float
    kl_divergence: float
    iou: float
    outputs: _containers.RepeatedCompositeFieldContainer[OutputFidelity]
    user_metrics: _containers.ScalarMap[str, float]
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., candidate_id: _Optional[str] = ..., device: _Optional[str] = ..., status: _Optional[_Union[ResultStatus, str]] = ..., crash_cause: _Optional[str] = ..., stderr_tail: _Optional[str] = ..., top1_agreement: _Optional[float] = ..., top5_agreement: _Optional[float] = ..., top1_accuracy: _Optional[float] = ..., size_bytes: _Optional[int] = ..., latency_ms_p50: _Optional[float] = ..., latency_ms_p90: _Optional[float] = ..., num_images: _Optional[int] = ..., runtime: _Optional[_Union[RuntimeInfo, _Mapping]] = ..., wall_seconds: _Optional[float] = ..., fp32_latency_ms_p50: _Optional[float] = ..., latency_ratio_vs_fp32: _Optional[float] = ..., latency_ratio_p10: _Optional[float] = ..., latency_ratio_p90: _Optional[float] = ..., task: _Optional[str] = ..., output_sqnr_db: _Optional[float] = ..., cosine: _Optional[float] = ..., kl_divergence: _Optional[float] = ..., iou: _Optional[float] = ..., outputs: _Optional[_Iterable[_Union[OutputFidelity, _Mapping]]] = ..., user_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...
