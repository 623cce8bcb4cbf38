"""The device farm: coordinator-side state, scheduling, gRPC services and campaigns."""
