"""KEDA's external-scaler interface: the project's ``externalscaler.proto`` and the modules grpcio-tools generated from it."""
