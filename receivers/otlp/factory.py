from agent_sre.pipeline.component import Factory, Kind
from agent_sre.receivers.otlp.config import OtlpReceiverConfig
from agent_sre.receivers.otlp.receiver import OtlpReceiver

factory = Factory(
    type="otlp",
    kind=Kind.RECEIVER,
    config_model=OtlpReceiverConfig,
    create=OtlpReceiver,
    signals=("traces", "metrics", "logs"),
    description="Receives OTLP traces, metrics and logs over gRPC and HTTP (protobuf and JSON); acknowledges "
                "committed data only.",
)
