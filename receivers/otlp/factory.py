from agent_sre.pipeline.component import Factory, Kind
from agent_sre.receivers.otlp.config import OtlpReceiverConfig
from agent_sre.receivers.otlp.receiver import OtlpReceiver

factory = Factory(
    type="otlp",
    kind=Kind.RECEIVER,
    config_model=OtlpReceiverConfig,
    create=OtlpReceiver,
    description="Receives OTLP traces over gRPC and HTTP (protobuf and JSON); acknowledges committed spans only.",
)
