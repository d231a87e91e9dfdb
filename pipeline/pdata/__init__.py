"""The data model: the canonical span schema, OTLP <-> Arrow codecs (protobuf and JSON) and the
normalisation table's engine.  Imports nothing above it."""
